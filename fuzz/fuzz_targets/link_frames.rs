//! What crosses the node ↔ controller link and the bus: binary publishes
//! (`decode_publish`), bus envelopes (`Envelope::decode`, also inside a publish), and the text
//! frames each side reads (registry requests, the controller's replies). None may panic, and
//! an envelope that decodes encodes back to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use protocol::bus::Envelope;
use protocol::link::{LinkRequest, LinkServerFrame, decode_publish};

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    let bytes = Bytes::copy_from_slice(rest);
    match which % 4 {
        0 => {
            if let Ok(publish) = decode_publish(bytes) {
                let _ = Envelope::decode(publish.envelope);
            }
        }
        1 => {
            if let Ok(envelope) = Envelope::decode(bytes.clone()) {
                let again = Envelope::decode(envelope.encode()).expect("re-encoded envelope");
                assert_eq!(again.frame, envelope.frame);
            }
        }
        2 => {
            let _ = serde_json::from_slice::<LinkRequest>(rest);
        }
        _ => {
            let _ = serde_json::from_slice::<LinkServerFrame>(rest);
        }
    }
});
