//! Where log lines go: a bounded queue drained by one dedicated thread that writes to stderr.
//! The thread emitting a line (often a runtime worker answering a probe) never waits on the
//! reader of stderr. When the queue is full (nobody reads the pipe, a log shipper is stuck) the
//! line is dropped and counted in `healthgate_log_lines_dropped_total`, so a stalled reader
//! costs log lines, never probe answers.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Lines are a few hundred bytes, so this is a few MiB at most: enough to ride out a reader
/// that pauses for a moment, small enough that a reader that never comes back costs little.
pub const QUEUE_LINES: usize = 8192;
/// How often [`flush`] retries while the queue is full.
const FLUSH_RETRY: Duration = Duration::from_millis(5);

enum Message {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

fn queue() -> &'static SyncSender<Message> {
    static QUEUE: OnceLock<SyncSender<Message>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, lines) = mpsc::sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("healthgate-log".into())
            .spawn(move || write_lines(lines, std::io::stderr()))
            .expect("the log writer thread starts");
        sender
    })
}

fn write_lines(lines: Receiver<Message>, mut out: impl Write) {
    for message in lines {
        match message {
            // Nowhere to report a failed write to; the next line may fare better.
            Message::Line(line) => drop(out.write_all(&line)),
            Message::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
}

/// Queues one complete line (newline included) for stderr, or drops and counts it.
pub fn write_line(line: Vec<u8>) {
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
        queue().try_send(Message::Line(line))
    {
        crate::metrics::log_lines().dropped.inc();
    }
}

/// Waits until every line queued so far is written, or `timeout` passes: the last lines before
/// exit should not be lost, and a stalled reader must not keep the process from exiting.
pub fn flush(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let (done, written) = mpsc::sync_channel(1);
    let mut message = Message::Flush(done);
    loop {
        match queue().try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                message = back;
                std::thread::sleep(FLUSH_RETRY);
            }
            Err(_) => return,
        }
    }
    let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_in_order_and_flush_waits_for_them() {
        let (sender, lines) = mpsc::sync_channel(4);
        let writer = std::thread::spawn(move || {
            let mut out = Vec::new();
            write_lines(lines, &mut out);
            out
        });
        sender.send(Message::Line(b"a\n".to_vec())).unwrap();
        sender.send(Message::Line(b"b\n".to_vec())).unwrap();
        let (done, written) = mpsc::sync_channel(1);
        sender.send(Message::Flush(done)).unwrap();
        written.recv().unwrap();
        drop(sender);
        assert_eq!(writer.join().unwrap(), b"a\nb\n");
    }
}
