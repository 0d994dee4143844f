//! Decodes the input as a stream of MQTT 3.1.1 packets; every packet that
//! decodes must re-encode and decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rookery_codec::Protocol;

fuzz_target!(|data: &[u8]| rookery_codec_fuzz::decode_all(data, Protocol::V311));
