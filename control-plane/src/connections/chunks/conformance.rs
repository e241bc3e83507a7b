//! What every [`Chunks`] store must do, run against each backend (memory in
//! the unit tests, DynamoDB on moto in `tests/stores/chunks_dynamodb.rs`).

use std::{future::Future, time::Duration};

use streamer_proto::client::chunk::{Chunk, JoinError};

use super::{Added, ChunkError, ChunkLimits, Chunks};

/// 4 pieces, 100 bytes, 30 s.
pub fn limits() -> ChunkLimits {
    ChunkLimits {
        max_bytes: 100,
        max_chunks: 4,
        timeout: Duration::from_secs(30),
        max_held_bytes: usize::MAX,
        max_held_bytes_per_tenant: usize::MAX,
        max_held_bytes_per_connection: usize::MAX,
    }
}

/// A piece.
pub fn piece(id: &str, index: u32, count: u32, data: &str) -> Chunk {
    Chunk {
        chunk_id: id.to_owned(),
        index,
        count,
        data: data.to_owned(),
    }
}

fn pending(started: bool) -> Added {
    Added {
        started,
        joined: None,
    }
}

/// Runs the suite on stores made by `make`, each for a fresh connection id
/// prefix so that one table serves every case.
pub async fn run<S, F, M>(make: M)
where
    S: Chunks,
    F: Future<Output = S>,
    M: Fn(ChunkLimits) -> F,
{
    let store = make(limits()).await;
    let c = |name: &str| format!("{name}-{}", uuid::Uuid::new_v4().simple());
    let t0 = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX / 2);

    // Pieces in any order join into the message; only the first starts it.
    let a = c("order");
    assert_eq!(
        store.add(&a, "t", piece("m1", 2, 3, "c"), t0).await,
        Ok(pending(true))
    );
    assert_eq!(
        store.add(&a, "t", piece("m1", 0, 3, "a"), t0).await,
        Ok(pending(false))
    );
    assert_eq!(
        store.add(&a, "t", piece("m1", 1, 3, "b"), t0).await,
        Ok(Added {
            started: false,
            joined: Some("abc".into())
        })
    );
    // The next message of the connection starts afresh, even with the same id.
    assert_eq!(
        store.add(&a, "t", piece("m1", 0, 2, "x"), t0).await,
        Ok(pending(true))
    );
    assert_eq!(
        store.add(&a, "t", piece("m1", 1, 2, "y"), t0).await,
        Ok(Added {
            started: false,
            joined: Some("xy".into())
        })
    );

    // A repeated index is refused; the message still completes.
    let b = c("dup");
    store
        .add(&b, "t", piece("m", 0, 2, "a"), t0)
        .await
        .expect("first");
    assert_eq!(
        store.add(&b, "t", piece("m", 0, 2, "a"), t0).await,
        Err(ChunkError::Refused(JoinError::Duplicate))
    );
    assert_eq!(
        store.add(&b, "t", piece("m", 1, 3, "b"), t0).await,
        Err(ChunkError::Refused(JoinError::CountChanged))
    );
    assert_eq!(
        store
            .add(&b, "t", piece("m", 1, 2, "b"), t0)
            .await
            .expect("last")
            .joined
            .as_deref(),
        Some("ab")
    );

    // One message at a time per connection; other connections are free.
    let d = c("interleaved");
    store
        .add(&d, "t", piece("first", 0, 2, "1"), t0)
        .await
        .expect("first");
    assert_eq!(
        store.add(&d, "t", piece("second", 0, 2, "2"), t0).await,
        Err(ChunkError::Refused(JoinError::Interleaved))
    );
    let other = c("other");
    assert_eq!(
        store.add(&other, "t", piece("second", 0, 2, "2"), t0).await,
        Ok(pending(true))
    );
    assert_eq!(
        store
            .add(&d, "t", piece("first", 1, 2, "1"), t0)
            .await
            .expect("last")
            .joined
            .as_deref(),
        Some("11")
    );

    // Bounds: too many pieces, too many bytes (the message is dropped).
    let e = c("bounds");
    assert_eq!(
        store.add(&e, "t", piece("m", 0, 5, "a"), t0).await,
        Err(ChunkError::Refused(JoinError::TooLarge))
    );
    assert_eq!(
        store
            .add(&e, "t", piece("m", 0, 2, &"x".repeat(101)), t0)
            .await,
        Err(ChunkError::Refused(JoinError::TooLarge))
    );
    store
        .add(&e, "t", piece("m", 0, 2, &"x".repeat(60)), t0)
        .await
        .expect("60 bytes");
    assert_eq!(
        store
            .add(&e, "t", piece("m", 1, 2, &"x".repeat(41)), t0)
            .await,
        Err(ChunkError::Refused(JoinError::TooLarge))
    );
    assert!(
        store
            .add(&e, "t", piece("m", 1, 2, "y"), t0)
            .await
            .expect("restarted")
            .started,
        "the refused message was dropped: its next piece starts a new one"
    );
    assert_eq!(
        store
            .add(&e, "t", piece("m", 0, 2, &"x".repeat(99)), t0)
            .await
            .expect("at the limit")
            .joined
            .map(|j| j.len()),
        Some(100)
    );
    assert_eq!(
        store.add(&e, "t", piece("bad id", 0, 2, "x"), t0).await,
        Err(ChunkError::Refused(JoinError::Malformed(
            "chunk_id must be 1 to 64 letters, digits, '-' or '_'"
        )))
    );

    // A message not complete within the timeout is dropped; a later
    // message replaces it.
    let f = c("timeout");
    let late = t0 + crate::clock::ms(limits().timeout) + 1;
    store
        .add(&f, "t", piece("slow", 0, 2, "a"), t0)
        .await
        .expect("first");
    assert_eq!(
        store.add(&f, "t", piece("slow", 1, 2, "b"), late).await,
        Err(ChunkError::TimedOut)
    );
    store
        .add(&f, "t", piece("again", 0, 2, "a"), late)
        .await
        .expect("after the timeout");
    let g = c("replaced");
    store
        .add(&g, "t", piece("old", 0, 2, "a"), t0)
        .await
        .expect("old");
    assert_eq!(
        store.add(&g, "t", piece("new", 0, 2, "b"), late).await,
        Ok(pending(true))
    );
    assert_eq!(
        store
            .add(&g, "t", piece("new", 1, 2, "c"), late)
            .await
            .expect("new")
            .joined
            .as_deref(),
        Some("bc")
    );

    // Forgetting drops the message.
    let h = c("forget");
    store
        .add(&h, "t", piece("m", 0, 2, "a"), t0)
        .await
        .expect("first");
    store.forget(&h).await;
    assert!(
        store
            .add(&h, "t", piece("m", 1, 2, "b"), t0)
            .await
            .expect("anew")
            .started
    );
}
