//! The redaction routine on any text: no panic, and a password written after `password=` in it
//! never survives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let once = healthgate::secret::redact(text);
    let planted = format!("{text} password=Fz9canaryQ");
    assert!(
        !healthgate::secret::redact(&planted).contains("Fz9canaryQ"),
        "{planted:?}"
    );
    // Redacting twice changes nothing more.
    assert_eq!(healthgate::secret::redact(&once), once);
});
