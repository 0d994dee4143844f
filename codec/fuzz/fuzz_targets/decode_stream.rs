//! First byte: protocol and read size; the rest: a stream decoded both in one go and in
//! chunks, which must agree (see `rookery_codec_fuzz::decode_stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rookery_codec_fuzz::decode_stream(data));
