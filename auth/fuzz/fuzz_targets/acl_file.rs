//! Parses the input as an ACL file and runs checks with it; see `check_acl_file`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        rookery_auth_fuzz::check_acl_file(text);
    }
});
