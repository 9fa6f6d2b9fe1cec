//! `GET /v1/events/stream` (SPEC section 8): the event log live as
//! Server-Sent Events — in order, resumable with `Last-Event-ID`, filtered
//! by tenant and token, and a client that stops reading holds up neither
//! the control task nor the other clients.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// `PUT weights` on `tenant` with a reason, which must succeed.
async fn set(proxy: &TestProxy, tenant: &str, blue: u32, green: u32, reason: &str) {
    let body = format!("{{\"blue\":{blue},\"green\":{green},\"reason\":\"{reason}\"}}");
    let r = proxy
        .admin(
            "PUT",
            &format!("/v1/tenants/{tenant}/weights"),
            None,
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_and_a_reconnect_resumes_after_its_last_event_id() {
    let up = spawn_upstream("up").await;
    let proxy = Setup::shop()
        .on(&up)
        .and_tenant("blog")
        .on(&up)
        .spawn()
        .await;
    let admin = proxy.running.admin_addr;
    let mut all = open_stream(admin, "/v1/events/stream", None, None)
        .await
        .unwrap();
    let mut shop = open_stream(admin, "/v1/events/stream?tenant=shop", None, None)
        .await
        .unwrap();

    set(&proxy, "shop", 90, 10, "one").await;
    set(&proxy, "blog", 80, 20, "two").await;
    set(&proxy, "shop", 70, 30, "three").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = all.next_within(WAIT).await;
        let e = m.json();
        assert_eq!(m.id, e["seq"].as_u64(), "id: is the event's seq");
        seen.push((
            e["seq"].as_u64().unwrap(),
            e["reason"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        seen,
        [(1, "one".into()), (2, "two".into()), (3, "three".into())]
    );
    let only_shop: Vec<String> = [shop.next_within(WAIT).await, shop.next_within(WAIT).await]
        .iter()
        .map(|m| m.json()["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(only_shop, ["one", "three"], "?tenant= filters");
    drop(all);

    // Missed while away: a reconnect with Last-Event-ID: 2 gets 3 and the
    // ones after it, then live ones.
    set(&proxy, "blog", 60, 40, "four").await;
    let mut back = open_stream(admin, "/v1/events/stream", None, Some(2))
        .await
        .unwrap();
    for (seq, reason) in [(3, "three"), (4, "four")] {
        let e = back.next_within(WAIT).await.json();
        assert_eq!(
            (e["seq"].as_u64(), e["reason"].as_str()),
            (Some(seq), Some(reason))
        );
    }
    set(&proxy, "shop", 50, 50, "five").await;
    let e = back.next_within(WAIT).await.json();
    assert_eq!(
        (e["seq"].as_u64(), e["reason"].as_str()),
        (Some(5), Some("five"))
    );

    // A Last-Event-ID newer than any event: the server restarted and
    // numbers from 1 again, so everything kept is sent.
    let mut restarted = open_stream(admin, "/v1/events/stream", None, Some(99))
        .await
        .unwrap();
    assert_eq!(restarted.next_within(WAIT).await.id, Some(1));
    let mut req = admin_request(admin, "GET", "/v1/events/stream", None, None);
    req.headers_mut()
        .insert("last-event-id", "yesterday".parse().unwrap());
    let r = send_with(&client(), req).await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_needs_the_reader_role_and_keeps_to_the_tokens_tenants() {
    let up = spawn_upstream("up").await;
    let hex = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    let tokens = format!(
        "[admin.tokens.ops]\ntoken_sha256 = \"{}\"\ntenants = [\"*\"]\n\n[admin.tokens.blog-ci]\ntoken_sha256 = \"{}\"\ntenants = [\"blog\"]\n\n",
        hex("ops-secret"),
        hex("blog-secret")
    );
    let proxy = Setup::shop()
        .on(&up)
        .and_tenant("blog")
        .on(&up)
        .preamble(&tokens)
        .spawn()
        .await;
    let admin = proxy.running.admin_addr;
    let path = "/v1/events/stream";
    assert_eq!(
        open_stream(admin, path, None, None).await.err().unwrap().0,
        401
    );
    let wrong = open_stream(admin, path, Some("nope"), None).await;
    assert_eq!(wrong.err().unwrap().0, 401);
    let (status, body) = open_stream(
        admin,
        "/v1/events/stream?tenant=shop",
        Some("blog-secret"),
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status, 403, "{body}");

    // The scoped token's stream carries its tenant's events only.
    let mut blog = open_stream(admin, path, Some("blog-secret"), None)
        .await
        .unwrap();
    for (tenant, weights) in [("shop", "90,\"green\":10"), ("blog", "80,\"green\":20")] {
        let r = proxy
            .admin(
                "PUT",
                &format!("/v1/tenants/{tenant}/weights"),
                Some("ops-secret"),
                Some(&format!("{{\"blue\":{weights}}}")),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let e = blog.next_within(WAIT).await.json();
    assert_eq!(e["tenant"], "blog");
    assert_eq!(e["actor"], "ops");

    // The token taken out of the control file: its stream ends at the
    // next event (the reload's own).
    edit_file(&proxy.path, &hex("blog-secret"), &hex("rotated"));
    let r = proxy
        .admin("POST", "/v1/config/reload", Some("ops-secret"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    blog.ends_within(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_up_neither_changes_nor_other_clients() {
    const CHANGES: u64 = 400;
    let up = spawn_upstream("up").await;
    let proxy = Setup::shop().on(&up).spawn().await;
    let admin = proxy.running.admin_addr;
    // A client that stops reading: over h2c with a 4 KB stream window
    // that it never gives back until it reads, so the server can send it
    // three events at most; past those, its feed waits, and past the live
    // channel's buffer, it falls behind.
    let mut stalled = open_stream_h2(admin, "/v1/events/stream", 4096).await;
    let mut reader = open_stream(admin, "/v1/events/stream", None, None)
        .await
        .unwrap();

    // Each change must be applied promptly while one reader is stalled:
    // the control task never waits on a stream.
    let pump = "p".repeat(1000);
    let started = Instant::now();
    let reading = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < CHANGES as usize {
            let m = reader.next_within(WAIT).await;
            assert_eq!(m.kind, "message");
            seqs.push(m.id.unwrap());
        }
        seqs
    });
    for i in 0..CHANGES {
        let call = Instant::now();
        set(&proxy, "shop", 90 - (i % 2) as u32, 10, &pump).await;
        assert!(
            call.elapsed() < Duration::from_secs(5),
            "change {i} took {:?}",
            call.elapsed()
        );
    }
    let seqs = reading.await.unwrap();
    assert_eq!(
        seqs,
        (1..=CHANGES).collect::<Vec<_>>(),
        "the reading client got every event, in order"
    );
    eprintln!("{CHANGES} changes and events in {:?}", started.elapsed());

    // The stalled client, reading at last, has fallen behind the live
    // channel; it catches up from the history and misses nothing.
    let mut next = 1;
    while next <= CHANGES {
        let m = stalled.next_within(WAIT).await;
        assert_eq!(m.kind, "message", "no gap: the history still holds them");
        assert_eq!(m.id, Some(next), "in order, none repeated or lost");
        next += 1;
    }
}
