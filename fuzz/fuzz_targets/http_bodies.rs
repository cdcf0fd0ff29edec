//! The JSON bodies the controller reads from anyone (registration, login) or from a signed-in
//! device, and the bodies a client reads back. The first byte picks the type; none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::http::{
    AssignResponse, CreateRoomRequest, DirectRequest, ErrorBody, HistoryPage, InviteRequest,
    LoginRequest, LoginResponse, RegisterRequest, ServerInfo,
};

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(body: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        let again = serde_json::to_vec(&value).expect("an accepted body serializes");
        serde_json::from_slice::<T>(&again).expect("a serialized body parses");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    match which % 10 {
        0 => round_trip::<RegisterRequest>(body),
        1 => round_trip::<LoginRequest>(body),
        2 => round_trip::<CreateRoomRequest>(body),
        3 => round_trip::<DirectRequest>(body),
        4 => round_trip::<InviteRequest>(body),
        5 => round_trip::<LoginResponse>(body),
        6 => round_trip::<AssignResponse>(body),
        7 => round_trip::<HistoryPage>(body),
        8 => round_trip::<ServerInfo>(body),
        _ => round_trip::<ErrorBody>(body),
    }
});
