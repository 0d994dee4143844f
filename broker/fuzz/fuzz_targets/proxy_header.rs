//! PROXY protocol v1/v2 headers: parsing arbitrary bytes never panics, and a header that looks
//! like one is either parsed or refused with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rookery_broker::listener::proxy;

fuzz_target!(|data: &[u8]| {
    let _ = proxy::looks_like_header(data);
    let _ = proxy::parse(data);
    // The same bytes behind a valid v2 signature, to reach deeper into the v2 parser.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(data);
    let _ = proxy::parse(&v2);
    let mut v1 = b"PROXY ".to_vec();
    v1.extend_from_slice(data);
    let _ = proxy::parse(&v1);
});
