//! Shared helpers for the integration tests; each test binary includes this with `mod support;`.

pub mod apiserver;
pub mod dns;
pub mod healthgate;
pub mod kube_env;
pub mod mariadb;
pub mod netns;
pub mod node;
pub mod policy;
pub mod services;
pub mod tls;
pub mod tools;

/// Runs `cmd` to completion, feeding it `stdin` (or nothing), and captures stdout and stderr.
pub fn run_with_stdin(
    cmd: &mut std::process::Command,
    stdin: Option<&str>,
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if let Some(input) = stdin {
        // Dropped at the end of the statement, so the child sees end-of-file.
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("writing stdin");
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"))
}
