//! Cases the API fuzzing run (scripts/api-test.sh, schemathesis over docs/openapi.json) found,
//! kept as plain regression tests: each answer is one the document lists for its route.

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn concurrent_creates_of_one_enrollment_answer_201_once_and_409_otherwise_never_412() {
    let app = spawn_app().await;
    let body = json!({
        "registrationId": "twice-1",
        "customer": { "id": "contoso" },
    });
    // Several rounds: each lets the creates interleave differently (insert, take-over, complete).
    for round in 0..3 {
        let answers = join_all((0..6).map(|_| app.post("/enrollments", &body))).await;
        let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        statuses.sort_unstable();
        let created = statuses.iter().filter(|s| **s == 201).count();
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 409),
            "round {round}: {statuses:?}: {:?}",
            answers.iter().map(|a| &a.text).collect::<Vec<_>>()
        );
        assert_eq!(created, 1, "round {round}: {statuses:?}");
        assert_eq!(app.get("/enrollments/twice-1").await.status, 200);
        assert_eq!(app.delete("/enrollments/twice-1").await.status, 204);
    }
}
