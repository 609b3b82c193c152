use reliable_kafka::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "a", topik = "b")]
struct Unknown {
    id: u64,
}

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "a", topic = "b")]
struct Repeated {
    id: u64,
}

#[derive(Serialize, Deserialize, Event)]
#[event(topic = "a", key = missing_field, version = 0)]
struct BadValues {
    id: u64,
}

fn main() {}
