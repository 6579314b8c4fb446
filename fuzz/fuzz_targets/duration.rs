//! The duration grammar: whatever parses formats back to text that parses to the same value.
#![no_main]

use healthgate::policy::duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(value) = duration::parse(text) {
        let formatted = duration::format(value);
        assert_eq!(duration::parse(&formatted), Ok(value), "{text:?} → {formatted:?}");
    }
});
