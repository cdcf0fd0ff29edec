//! What a node does first with every text frame a device sends: `ClientFrame::parse`. Whatever
//! the bytes, it answers a frame or an error, and a frame it accepts survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ws::ClientFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ClientFrame::parse(data) {
        let again = serde_json::to_vec(&frame).expect("an accepted frame serializes");
        let back = ClientFrame::parse(&again).expect("a serialized frame parses");
        assert_eq!(
            serde_json::to_value(&back).ok(),
            serde_json::to_value(&frame).ok()
        );
    } else if let Err(e) = ClientFrame::parse(data) {
        // Every refusal has a code and a message for the error frame.
        let _ = (e.code(), e.to_string());
    }
});
