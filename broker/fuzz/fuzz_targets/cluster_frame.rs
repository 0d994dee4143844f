//! Cluster link frames: decoding arbitrary bytes never panics and never allocates the length a
//! prefix claims before the bytes are there; a decoded frame encodes and decodes to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rookery_broker::cluster::frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = frame::decode(&mut buf) {
        let mut again = BytesMut::new();
        frame::encode(&f, &mut again);
        assert_eq!(frame::decode(&mut again), Ok(Some(f)));
    }
});
