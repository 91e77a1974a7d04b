//! The SQS Queue against a real moto server: the backend contract, delays beyond SQS's 15
//! minutes, the dead-letter queue, long polling, batches, stale receipts, and a run through a
//! fault-injecting proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use orch_testkit::{fault_proxy, moto};

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use fault_proxy::{FaultProxy, Faults};
use orch_aws::sqs::{SqsQueue, create_queues};
use orch_core::backend::{Message, Queue};
use orch_testkit::contract::{QueueSpec, queue_contract};

async fn client() -> Client {
    Client::new(&moto::sdk_config().await)
}

/// A plain queue without a dead-letter queue (or the existing one of that name).
async fn plain_queue(client: &Client, name: &str) -> SqsQueue {
    client.create_queue().queue_name(name).send().await.unwrap();
    SqsQueue::open(client.clone(), name).await.unwrap()
}

/// Receives until `n` messages arrived or `patience` ran out.
async fn receive_n(
    q: &SqsQueue,
    n: usize,
    visibility: Duration,
    patience: Duration,
) -> Vec<Message> {
    let deadline = Instant::now() + patience;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(q.receive(n - got.len(), visibility).await.unwrap());
        if got.len() < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meets_the_queue_contract() {
    if !orch_testkit::components::moto() {
        return;
    }
    let client = client().await;
    let make = |spec: QueueSpec| {
        let client = client.clone();
        async move {
            match spec.max_receives {
                Some(n) => {
                    create_queues(&client, &spec.name, n).await.unwrap();
                }
                None => {
                    client
                        .create_queue()
                        .queue_name(&spec.name)
                        .send()
                        .await
                        .unwrap();
                }
            }
            // No long polling: the contract's "not yet visible" checks expect receive to
            // answer at once.
            let q = SqsQueue::open(client, &spec.name)
                .await
                .unwrap()
                .with_wait_time(Duration::ZERO);
            Box::new(q) as Box<dyn Queue>
        }
    };
    // SQS delays and visibility timeouts are whole seconds.
    queue_contract(make, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_beyond_the_sqs_maximum_is_never_delivered_early() {
    if !orch_testkit::components::moto() {
        return;
    }
    let client = client().await;
    let name = moto::unique("orch-long-delay");
    // SQS's cap lowered from 900 s to 1 s: a 3 s delay takes the same path as a 1 h one.
    let q = plain_queue(&client, &name)
        .await
        .with_max_delay(Duration::from_secs(1))
        .with_wait_time(Duration::ZERO);
    let sent_at = Instant::now();
    let late = q.send("late", Duration::from_secs(3)).await.unwrap();
    let batch = q
        .send_batch(&[
            ("late-batch", Duration::from_secs(3)),
            ("soon", Duration::ZERO),
        ])
        .await
        .unwrap();
    assert_eq!(batch.len(), 2);

    // Until the 3 s are over only "soon" may arrive, however often we ask; the long-delayed
    // messages surface to the receiver (after 1 s) and are sent back quietly.
    let mut early = Vec::new();
    while sent_at.elapsed() < Duration::from_millis(2_700) {
        for m in q.receive(10, Duration::from_secs(30)).await.unwrap() {
            assert!(
                sent_at.elapsed() >= Duration::from_secs(3) || m.body == "soon",
                "{:?} arrived after {:?}, before its 3 s delay",
                m.body,
                sent_at.elapsed()
            );
            early.push(m);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        early.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["soon"]
    );
    assert_eq!(early[0].id, batch[1]);

    let got = receive_n(&q, 2, Duration::from_secs(30), Duration::from_secs(10)).await;
    assert!(sent_at.elapsed() >= Duration::from_secs(3));
    let mut bodies: Vec<(&str, &str)> = got
        .iter()
        .map(|m| (m.body.as_str(), m.id.as_str()))
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [("late", late.as_str()), ("late-batch", batch[0].as_str())],
        "both arrive, under the ids send returned"
    );
    assert!(
        got.iter().all(|m| m.receive_count == 1),
        "early sightings do not count as deliveries: {got:?}"
    );
    for m in &got {
        q.delete(&m.receipt).await.unwrap();
    }
    q.delete(&early[0].receipt).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redrive_policy_dead_letters_after_max_receive_count() {
    if !orch_testkit::components::moto() {
        return;
    }
    let client = client().await;
    let name = moto::unique("orch-redrive");
    let url = create_queues(&client, &name, 3).await.unwrap();
    // Running it again is fine (orch init twice).
    assert_eq!(create_queues(&client, &name, 3).await.unwrap(), url);

    let attrs = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attrs = attrs.attributes().unwrap();
    let policy: serde_json::Value =
        serde_json::from_str(&attrs[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(policy["maxReceiveCount"].as_u64(), Some(3));
    assert!(
        policy["deadLetterTargetArn"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{name}-dlq"))
    );
    assert_eq!(attrs[&QueueAttributeName::MessageRetentionPeriod], "345600");

    let q = SqsQueue::open(client.clone(), &name)
        .await
        .unwrap()
        .with_wait_time(Duration::ZERO);
    let dlq = SqsQueue::open(client.clone(), &q.dead_letter_name())
        .await
        .unwrap()
        .with_wait_time(Duration::ZERO);
    let id = q.send("poison", Duration::ZERO).await.unwrap();
    for n in 1..=3 {
        // Received and never deleted, as by a consumer that crashes on it.
        let got = receive_n(&q, 1, Duration::ZERO, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1, "delivery {n}");
        assert_eq!(got[0].receive_count, n);
    }
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
    let dead = receive_n(&dlq, 1, Duration::from_secs(30), Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 1, "the message must reach {name}-dlq");
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].body, "poison");
    dlq.delete(&dead[0].receipt).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_waits_for_a_message_and_returns_when_it_comes() {
    if !orch_testkit::components::moto() {
        return;
    }
    let client = client().await;
    let name = moto::unique("orch-long-poll");
    let q = plain_queue(&client, &name)
        .await
        .with_wait_time(Duration::from_secs(3));

    let started = Instant::now();
    assert!(
        q.receive(1, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2_500),
        "an empty long poll waits its time: {:?}",
        started.elapsed()
    );

    let sender = q.clone();
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        sender.send("wake", Duration::ZERO).await.unwrap()
    });
    let started = Instant::now();
    let got = q.receive(1, Duration::from_secs(30)).await.unwrap();
    let waited = started.elapsed();
    let id = send.await.unwrap();
    assert_eq!(got.len(), 1, "the message sent during the poll arrives");
    assert_eq!(got[0].id, id);
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(2_900),
        "the poll returns when the message comes, not at its end: {waited:?}"
    );
    q.delete(&got[0].receipt).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_more_than_ten_send_receive_and_delete() {
    if !orch_testkit::components::moto() {
        return;
    }
    let client = client().await;
    let name = moto::unique("orch-batch");
    let q = plain_queue(&client, &name)
        .await
        .with_wait_time(Duration::ZERO);
    let bodies: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    let messages: Vec<(&str, Duration)> = bodies
        .iter()
        .map(|b| (b.as_str(), Duration::ZERO))
        .collect();
    let ids = q.send_batch(&messages).await.unwrap();
    assert_eq!(ids.len(), 25);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 25);

    // One receive of 25 takes three calls of at most 10.
    let got = receive_n(&q, 25, Duration::from_secs(30), Duration::from_secs(10)).await;
    assert_eq!(got.len(), 25);
    assert_eq!(
        got.iter().map(|m| m.id.clone()).collect::<HashSet<_>>(),
        ids.iter().cloned().collect::<HashSet<_>>()
    );
    let mut receipts: Vec<&str> = got.iter().map(|m| m.receipt.as_str()).collect();
    // A receipt of a message already deleted is no error.
    q.delete(receipts[0]).await.unwrap();
    receipts.push(got[0].receipt.as_str());
    q.delete_batch(&receipts).await.unwrap();

    // Nothing comes back, not even after the visibility timeout would have run out.
    let again = receive_n(&q, 1, Duration::from_secs(30), Duration::from_secs(2)).await;
    assert!(again.is_empty(), "{again:?}");
    let attrs = client
        .get_queue_attributes()
        .queue_url(q.url())
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let attrs = attrs.attributes().unwrap();
    assert_eq!(attrs[&QueueAttributeName::ApproximateNumberOfMessages], "0");
    assert_eq!(
        attrs[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible],
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_after_the_visibility_ran_out_is_a_conflict() {
    if !orch_testkit::components::moto() {
        return;
    }
    let client = client().await;
    let name = moto::unique("orch-expired");
    let q = plain_queue(&client, &name)
        .await
        .with_wait_time(Duration::ZERO);
    q.send("slow", Duration::ZERO).await.unwrap();
    let got = receive_n(&q, 1, Duration::from_secs(1), Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    q.extend(&got[0].receipt, Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // Nobody received it again, but the holder cannot know that: it has lost the message.
    let err = q
        .extend(&got[0].receipt, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_5xx_answers_and_connection_resets() {
    if !orch_testkit::components::moto() {
        return;
    }
    let proxy = FaultProxy::start(
        &moto::moto().endpoint,
        Faults {
            error_rate: 0.08,
            reset_rate: 0.05,
            ..Faults::default()
        },
    )
    .await;
    let sdk = moto::sdk_config_for(&proxy.endpoint).await;
    // orch's retry policy (config::MAX_ATTEMPTS), as `load_sdk_config` sets it.
    let conf = aws_sdk_sqs::config::Builder::from(&sdk)
        .retry_config(
            aws_sdk_sqs::config::retry::RetryConfig::standard()
                .with_max_attempts(orch_aws::config::MAX_ATTEMPTS),
        )
        .build();
    let faulty = Client::from_conf(conf);
    let name = moto::unique("orch-faults");
    // The queue itself is made directly, so the test is about the queue's calls.
    create_queues(&client().await, &name, 5).await.unwrap();
    let q = SqsQueue::open(faulty, &name)
        .await
        .unwrap()
        .with_wait_time(Duration::ZERO);

    let bodies: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
    let mut ids: Vec<String> = Vec::new();
    for b in &bodies[..5] {
        ids.push(q.send(b, Duration::ZERO).await.unwrap());
    }
    let rest: Vec<(&str, Duration)> = bodies[5..]
        .iter()
        .map(|b| (b.as_str(), Duration::ZERO))
        .collect();
    ids.extend(q.send_batch(&rest).await.unwrap());

    let got = receive_n(&q, 30, Duration::from_secs(60), Duration::from_secs(20)).await;
    assert_eq!(
        got.iter().map(|m| m.id.clone()).collect::<HashSet<_>>(),
        ids.iter().cloned().collect::<HashSet<_>>(),
        "every message arrives once"
    );
    assert_eq!(got.len(), 30);
    for m in &got[..3] {
        q.extend(&m.receipt, Duration::from_secs(60)).await.unwrap();
        q.delete(&m.receipt).await.unwrap();
    }
    let receipts: Vec<&str> = got[3..].iter().map(|m| m.receipt.as_str()).collect();
    q.delete_batch(&receipts).await.unwrap();

    let stats = proxy.stats();
    assert!(
        stats.errors + stats.resets > 0,
        "no fault was injected, the test proved nothing: {stats:?}"
    );
    // Everything was deleted: the queue is empty (asked without the proxy).
    let attrs = client()
        .await
        .get_queue_attributes()
        .queue_url(q.url())
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let attrs = attrs.attributes().unwrap();
    assert_eq!(attrs[&QueueAttributeName::ApproximateNumberOfMessages], "0");
    assert_eq!(
        attrs[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible],
        "0"
    );
}
