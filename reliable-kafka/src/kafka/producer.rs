//! The producer side shared by the relay, the dead-letter publisher and the re-driver:
//! ordered sends of owned records, and the classes of send errors.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A record to produce, owned.
pub(crate) struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: rdkafka::message::OwnedHeaders,
}

/// A record handed to librdkafka, not yet acknowledged.
pub(crate) type Pending = Result<rdkafka::producer::DeliveryFuture, KafkaError>;

/// Enqueues `records` in order (waiting while the local queue is full, never letting a
/// later record overtake an earlier one) and then awaits all deliveries at once.
/// Result `i` belongs to record `i`.
pub(crate) async fn send_in_order(
    producer: &super::Producer,
    records: Vec<OutRecord>,
) -> Vec<Result<(), rdkafka::error::KafkaError>> {
    await_deliveries(enqueue_in_order(producer, records).await).await
}

/// The first half of [`send_in_order`]: hands `records` to librdkafka in order and
/// returns their delivery futures. Records enqueued by a later call come after these
/// in their partitions (the idempotent producer keeps that order).
pub(crate) async fn enqueue_in_order(producer: &super::Producer, records: Vec<OutRecord>) -> Vec<Pending> {
    use rdkafka::producer::FutureRecord;

    let mut pending = Vec::with_capacity(records.len());
    for OutRecord { topic, key, payload, headers } in records {
        // librdkafka copies key and payload at send; the headers move into the message.
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(k) = &key {
            rec = rec.key(k.as_slice());
        }
        if let Some(p) = &payload {
            rec = rec.payload(p.as_slice());
        }
        loop {
            match producer.send_result(rec) {
                Ok(f) => {
                    pending.push(Ok(f));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    pending.push(Err(e));
                    break;
                }
            }
        }
    }
    pending
}

/// The second half of [`send_in_order`]: the delivery report of each enqueued record.
pub(crate) async fn await_deliveries(pending: Vec<Pending>) -> Vec<Result<(), KafkaError>> {
    let futures = pending.into_iter().map(|p| async move {
        match p {
            Ok(f) => match f.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_canceled) => Err(KafkaError::Canceled),
            },
            Err(e) => Err(e),
        }
    });
    futures::future::join_all(futures).await
}

/// Whether a send failed because the record is too large.
pub(crate) fn is_size_error(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(e.rdkafka_error_code(), Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge))
}

/// Whether a send failed for a reason retrying cannot fix (the record itself is too
/// large or invalid, or the topic name is), as opposed to an outage. Only such errors
/// count toward the relay's `max_send_attempts`; outages, timeouts and authorization
/// errors are retried without limit, so a broker outage never parks rows.
pub(crate) fn is_permanent_send_error(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::MessageBatchTooLarge
                | C::InvalidTopic
        )
    )
}

/// Sends one record (see [`send_in_order`]).
pub(crate) async fn send_one(producer: &super::Producer, record: OutRecord) -> Result<(), KafkaError> {
    send_in_order(producer, vec![record]).await.into_iter().next().unwrap_or(Err(KafkaError::Canceled))
}

/// Whether a Kafka error may pass on its own (librdkafka's retriable errors: broker
/// outages, timeouts, leader changes, a full queue), as opposed to one that needs a
/// change (configuration, authorization, a record the broker rejects).
pub(crate) fn is_transient_kafka(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    if is_permanent_send_error(e) {
        return false;
    }
    match e.rdkafka_error_code() {
        Some(
            C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::MessageTimedOut
            | C::QueueFull
            | C::NotLeaderForPartition
            | C::LeaderNotAvailable
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::NetworkException
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::CoordinatorLoadInProgress
            | C::RebalanceInProgress
            | C::UnknownTopicOrPartition
            | C::Resolve
            | C::PreferredLeaderNotAvailable
            | C::KafkaStorageError
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::OffsetNotAvailable,
        ) => true,
        Some(_) => false,
        None => matches!(e, KafkaError::Canceled | KafkaError::NoMessageReceived),
    }
}
