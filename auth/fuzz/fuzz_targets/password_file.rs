//! Parses the input as a password file; see `check_password_file`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        rookery_auth_fuzz::check_password_file(text);
    }
});
