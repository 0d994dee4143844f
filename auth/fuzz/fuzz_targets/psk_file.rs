//! Parses the input as a PSK file; see `check_psk_file`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        rookery_auth_fuzz::check_psk_file(text);
    }
});
