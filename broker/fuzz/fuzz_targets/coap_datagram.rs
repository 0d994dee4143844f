//! CoAP datagrams as the gateway reads them: decoding arbitrary bytes, reading the request
//! (device, resource, query, options) and the block-wise handler never panic; a decoded
//! packet encodes to bytes that decode to the same packet.
#![no_main]

use std::net::SocketAddr;

use coap_lite::{BlockHandler, BlockHandlerConfig, CoapRequest, Packet};
use libfuzzer_sys::fuzz_target;
use rookery_broker::coap::request;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::from_bytes(data) else {
        return;
    };
    if let Ok(bytes) = packet.to_bytes_unlimited() {
        let again = Packet::from_bytes(&bytes).expect("what we encode decodes");
        assert_eq!(again.header.code, packet.header.code);
        assert_eq!(again.payload, packet.payload);
        assert_eq!(again.get_token(), packet.get_token());
    }
    let _ = request::parse(&packet, true);
    let _ = request::parse(&packet, false);
    let peer: SocketAddr = "192.0.2.1:5683".parse().expect("an address");
    let mut blocks = BlockHandler::new(BlockHandlerConfig::default());
    let mut exchange = CoapRequest::from_packet(packet, peer);
    if data.len() <= Packet::MAX_SIZE {
        let _ = blocks.intercept_request(&mut exchange);
    }
});
