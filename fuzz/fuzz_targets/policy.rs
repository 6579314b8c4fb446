//! Any bytes as a policy file: parse, deserialize and validate must return a policy or a list of
//! problems — no panic, no unbounded work (aliases, depth and size are limited).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = healthgate::standalone::parse_all(text, std::path::Path::new("fuzz.yaml"));
    }
});
