//! Cases the API fuzzing run (scripts/api-test.sh, schemathesis over docs/openapi.json) found,
//! kept as plain regression tests: each answer is one the document lists for its route.

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn concurrent_creates_of_one_enrollment_answer_201_or_409_never_412() {
    let app = spawn_app().await;
    let body = |customer: &str| {
        json!({
            "registrationId": "twice-1",
            "customer": { "id": customer },
        })
    };
    // Several rounds: each lets the creates (and reads, which finish a pending create)
    // interleave differently: insert, take-over, completion.
    let app = &app;
    for round in 0..3 {
        let creates = join_all((0..6).map(|i| {
            let customer = format!("customer-{i}");
            async move { app.post("/enrollments", &body(&customer)).await }
        }));
        let reads = join_all((0..3).map(|_| app.get("/enrollments/twice-1")));
        let (answers, reads) = tokio::join!(creates, reads);
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 409),
            "round {round}: {statuses:?}: {:?}",
            answers.iter().map(|a| &a.text).collect::<Vec<_>>()
        );
        assert!(reads.iter().all(|r| r.status == 200 || r.status == 404));
        // Each create that answered 201 had its own customer: exactly one of them is stored.
        let created: Vec<&serde_json::Value> = answers
            .iter()
            .filter(|a| a.status == 201)
            .map(|a| &a.body["customer"]["id"])
            .collect();
        assert_eq!(created.len(), 1, "round {round}: {statuses:?}");
        let stored = app.get("/enrollments/twice-1").await;
        assert_eq!(stored.status, 200);
        assert_eq!(&stored.body["customer"]["id"], created[0]);
        assert_eq!(app.delete("/enrollments/twice-1").await.status, 204);
    }
}
