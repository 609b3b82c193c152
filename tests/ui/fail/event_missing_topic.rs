use reliable_kafka::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(key = id)]
struct Booked {
    id: u64,
}

#[derive(Serialize, Deserialize, Event)]
struct NoAttribute {
    id: u64,
}

fn main() {}
