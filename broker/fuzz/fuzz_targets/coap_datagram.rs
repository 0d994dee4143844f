//! CoAP datagrams as the gateway reads them: decoding arbitrary bytes, reading the request
//! (device, resource, query, options) and the block-wise handler never panic; a message the
//! gateway accepts encodes to bytes that decode to the same message.
#![no_main]

use std::net::SocketAddr;

use coap_lite::{BlockHandler, BlockHandlerConfig, CoapRequest};
use libfuzzer_sys::fuzz_target;
use rookery_broker::coap::{datagram, request};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = datagram::decode(data) else {
        return;
    };
    let bytes = packet.to_bytes_unlimited().expect("an accepted message encodes");
    let again = datagram::decode(&bytes).expect("what we encode decodes");
    assert_eq!(again.header.code, packet.header.code);
    assert_eq!(again.header.get_type(), packet.header.get_type());
    assert_eq!(again.header.message_id, packet.header.message_id);
    assert_eq!(again.payload, packet.payload);
    assert_eq!(again.get_token(), packet.get_token());
    assert_eq!(
        again.options().collect::<Vec<_>>(),
        packet.options().collect::<Vec<_>>()
    );
    let _ = request::parse(&packet, true, None);
    let _ = request::parse(&packet, false, None);
    let _ = request::parse(&packet, false, Some("psk-device"));
    let peer: SocketAddr = "192.0.2.1:5683".parse().expect("an address");
    // As the gateway does: the block handler sees only requests whose options leave room
    // for a block.
    if !datagram::leaves_room_for_a_block(&packet) {
        return;
    }
    let mut blocks = BlockHandler::new(BlockHandlerConfig {
        max_total_message_size: datagram::BLOCK_MESSAGE_SIZE,
        cache_expiry_duration: std::time::Duration::from_secs(120),
    });
    let mut exchange = CoapRequest::from_packet(packet, peer);
    let _ = blocks.intercept_request(&mut exchange);
    // And a response as large as a block-wise GET can make, cut into blocks.
    if let Some(r) = exchange.response.as_mut() {
        r.message.payload = vec![b'x'; 5000];
    }
    let _ = blocks.intercept_response(&mut exchange);
});
