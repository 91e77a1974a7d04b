//! Handlers built into the worker, needing no user code: `identity` measures the framework's own
//! per-item overhead and `sleep` simulates a handler of known cost (benchmarks, docs/benchmarks.md).

use std::time::Duration;

use serde_json::value::RawValue;

use super::{Answer, Handler, Outcome};

/// Returns every item unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

#[async_trait::async_trait]
impl Handler for Identity {
    async fn call(&self, item: &RawValue) -> Answer {
        Outcome::Ok(item.to_owned()).into()
    }

    fn call_sync(&self, item: &RawValue) -> Option<Answer> {
        Some(Outcome::Ok(item.to_owned()).into())
    }
}

/// Waits `duration`, then returns the item.
#[derive(Debug, Clone, Copy)]
pub struct Sleep {
    pub duration: Duration,
}

#[async_trait::async_trait]
impl Handler for Sleep {
    async fn call(&self, item: &RawValue) -> Answer {
        tokio::time::sleep(self.duration).await;
        Outcome::Ok(item.to_owned()).into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn identity_answers_synchronously() {
        let item = raw(r#"{"a":1}"#);
        match Identity.call_sync(&item) {
            Some(Answer {
                outcome: Outcome::Ok(result),
                usage,
            }) => {
                assert_eq!(result.get(), r#"{"a":1}"#);
                assert!(usage.is_empty() && usage.capacity() == 0, "no allocation");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn identity_and_sleep_return_the_item() {
        let item = raw(r#"{"b":[1,2]}"#);
        match Identity.call(&item).await.outcome {
            Outcome::Ok(result) => assert_eq!(result.get(), item.get()),
            other => panic!("unexpected {other:?}"),
        }
        let sleep = Sleep {
            duration: Duration::from_millis(5),
        };
        assert!(sleep.call_sync(&item).is_none());
        let started = std::time::Instant::now();
        match sleep.call(&item).await.outcome {
            Outcome::Ok(result) => assert_eq!(result.get(), item.get()),
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(5));
    }
}
