//! The service layer over in-memory storage and cloud fakes, with a failure injected into each
//! DPS call (create, bulk create, update, delete, key read, registration read and delete), the
//! hub identity delete and each table write (insert, replace, delete, history) of the
//! DPS/registry protocol.

use super::devices::CommandRequest;
use super::enrollments::{EnrollmentPatch, NewEnrollment};
use super::import::{parse_csv, Outcome};
use super::{Service, ServiceError, Upstream};
use crate::cloud::dps::Provisioning;
use crate::cloud::fake::{FakeDps, FakeHubs};
use crate::domain::{DpsSync, Filter, RegistrationId, Status};
use crate::storage::memory::MemoryRegistry;
use crate::storage::Registry;
use serde_json::json;
use std::sync::Arc;

const HUB: &str = "hub-1.example";

struct World {
    service: Service,
    store: Arc<MemoryRegistry>,
    dps: Arc<FakeDps>,
    hubs: Arc<FakeHubs>,
}

fn world() -> World {
    let store = Arc::new(MemoryRegistry::default());
    let dps = Arc::new(FakeDps::default());
    let hubs = Arc::new(FakeHubs::linked(&[HUB, "hub-2.example"]));
    let service = Service {
        store: store.clone(),
        dps: dps.clone(),
        hubs: hubs.clone(),
        ..Service::for_tests()
    };
    World {
        service,
        store,
        dps,
        hubs,
    }
}

fn request(id: &str) -> NewEnrollment {
    serde_json::from_value(json!({
        "registrationId": id,
        "customer": { "id": "contoso", "name": "Contoso" },
        "asset": { "serialNumber": "SN-1", "model": "T-100" },
        "initialTwin": { "tags": { "site": "berlin" } },
    }))
    .unwrap()
}

async fn record(world: &World, id: &str) -> Option<crate::storage::Stored> {
    world
        .store
        .get(&RegistrationId::parse(id).unwrap())
        .await
        .unwrap()
}

fn unavailable(error: &ServiceError, service: Upstream) -> bool {
    matches!(error, ServiceError::Unavailable { service: s, .. } if *s == service)
}

#[tokio::test]
async fn enrolling_writes_the_record_and_the_dps_enrollment() {
    let w = world();
    let stored = w.service.enroll(request("dev-1")).await.unwrap();
    assert_eq!(stored.record.sync, DpsSync::Complete);
    assert_eq!(stored.record.status(), Status::Enrolled);
    assert_eq!(
        w.dps.enrollment("dev-1").unwrap().record.initial_twin.tags["site"],
        "berlin"
    );
    let again = w.service.enroll(request("DEV-1")).await.unwrap_err();
    assert!(
        matches!(
            again,
            ServiceError::Conflict {
                code: "alreadyEnrolled",
                ..
            }
        ),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_dps_failure_during_enrollment_is_finished_by_the_clients_retry() {
    let w = world();
    w.dps.faults.fail("create", 1);
    let error = w.service.enroll(request("dev-1")).await.unwrap_err();
    assert!(unavailable(&error, Upstream::Dps), "{error:?}");
    assert_eq!(
        record(&w, "dev-1").await.unwrap().record.sync,
        DpsSync::PendingCreate
    );
    assert!(!w.dps.has("dev-1"));
    let stored = w.service.enroll(request("dev-1")).await.unwrap();
    assert_eq!(stored.record.sync, DpsSync::Complete);
    assert!(w.dps.has("dev-1"));
}

#[tokio::test]
async fn a_storage_failure_after_dps_succeeded_is_repaired_on_the_next_read() {
    let w = world();
    // Reserve succeeds, DPS succeeds, clearing the intent fails.
    w.store.fail("replace", 1);
    let error = w.service.enroll(request("dev-1")).await.unwrap_err();
    assert!(unavailable(&error, Upstream::Storage), "{error:?}");
    assert!(w.dps.has("dev-1"));
    assert_eq!(
        record(&w, "dev-1").await.unwrap().record.sync,
        DpsSync::PendingCreate
    );
    let read = w.service.enrollment("dev-1").await.unwrap();
    assert_eq!(read.record.sync, DpsSync::Complete);
    assert_eq!(
        record(&w, "dev-1").await.unwrap().record.sync,
        DpsSync::Complete
    );
}

#[tokio::test]
async fn an_enrollment_dps_has_but_the_registry_does_not_is_refused_and_leaves_no_record() {
    let w = world();
    w.service.enroll(request("dev-1")).await.unwrap();
    let stored = record(&w, "dev-1").await.unwrap();
    w.store.delete(&stored).await.unwrap();
    let error = w.service.enroll(request("dev-1")).await.unwrap_err();
    assert!(
        matches!(
            error,
            ServiceError::Conflict {
                code: "existsInDps",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(record(&w, "dev-1").await.is_none());
}

#[tokio::test]
async fn a_failed_dps_update_leaves_an_intent_that_repair_finishes() {
    let w = world();
    w.service.enroll(request("dev-1")).await.unwrap();
    w.dps.faults.fail("update", 1);
    let patch: EnrollmentPatch = serde_json::from_value(
        json!({ "enabled": false, "initialTwin": { "desiredProperties": { "interval": 5 } } }),
    )
    .unwrap();
    let error = w.service.change("dev-1", patch, None).await.unwrap_err();
    assert!(unavailable(&error, Upstream::Dps), "{error:?}");
    assert!(
        w.dps.enrollment("dev-1").unwrap().record.enabled,
        "DPS was not changed"
    );
    let pending = w
        .service
        .store
        .list(&Filter::unsynced(), 10, None)
        .await
        .unwrap();
    assert_eq!(pending.items.len(), 1);
    let report = w.service.repair_pending(100).await.unwrap();
    assert_eq!(report.repaired, 1);
    let enrollment = w.dps.enrollment("dev-1").unwrap().record;
    assert!(!enrollment.enabled);
    assert_eq!(enrollment.initial_twin.desired_properties["interval"], 5);
    assert_eq!(
        record(&w, "dev-1").await.unwrap().record.status(),
        Status::Disabled
    );
}

#[tokio::test]
async fn changes_are_guarded_by_the_etag_and_registry_only_changes_skip_dps() {
    let w = world();
    let first = w.service.enroll(request("dev-1")).await.unwrap();
    let patch: EnrollmentPatch =
        serde_json::from_value(json!({ "customer": { "id": "fabrikam" } })).unwrap();
    let changed = w
        .service
        .change("dev-1", patch.clone(), Some(&first.etag))
        .await
        .unwrap();
    assert_eq!(changed.record.customer.id.as_str(), "fabrikam");
    assert_eq!(
        w.dps
            .enrollment("dev-1")
            .unwrap()
            .record
            .customer
            .id
            .as_str(),
        "contoso",
        "DPS holds no customer"
    );
    let stale = w
        .service
        .change("dev-1", patch, Some(&first.etag))
        .await
        .unwrap_err();
    assert!(
        matches!(stale, ServiceError::PreconditionFailed(_)),
        "{stale:?}"
    );
}

#[tokio::test]
async fn deleting_removes_the_enrollment_registration_and_hub_identity_even_after_a_failure() {
    let w = world();
    w.service.enroll(request("dev-1")).await.unwrap();
    w.dps.register("dev-1", HUB);
    w.hubs.add_device(HUB, "dev-1", false);
    w.hubs.faults.fail("delete_device", 1);
    let error = w.service.remove("dev-1", None).await.unwrap_err();
    assert!(unavailable(&error, Upstream::Hub), "{error:?}");
    assert!(
        !w.dps.has("dev-1"),
        "the enrollment goes first, so the device cannot come back"
    );
    assert_eq!(
        record(&w, "dev-1").await.unwrap().record.status(),
        Status::Deleting
    );
    w.service.repair_pending(100).await.unwrap();
    assert!(record(&w, "dev-1").await.is_none());
    assert!(!w.hubs.has_device(HUB, "dev-1"));
    assert!(w.dps.registration("dev-1").await.unwrap().is_none());
}

#[tokio::test]
async fn device_ids_are_unique_across_enrollments() {
    let w = world();
    w.service.enroll(request("dev-1")).await.unwrap();
    let mut other = request("dev-2");
    other.device_id = Some("dev-1".into());
    let error = w.service.enroll(other).await.unwrap_err();
    assert!(
        matches!(
            error,
            ServiceError::Conflict {
                code: "deviceIdTaken",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_provisioning_code_carries_the_dps_key_and_scope() {
    let w = world();
    w.service.enroll(request("dev-1")).await.unwrap();
    let answer = w.service.provisioning_code("dev-1").await.unwrap();
    let parsed = iot_credentials::ProvisioningCode::parse(&answer.code.expose()).unwrap();
    assert_eq!(parsed.id_scope, "0ne00000001");
    assert_eq!(parsed.device_key, w.dps.enrollment("dev-1").unwrap().key);
    assert!(matches!(
        w.service.provisioning_code("nope").await,
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn reading_an_unassigned_device_learns_its_registration_from_dps() {
    let w = world();
    w.service.enroll(request("dev-1")).await.unwrap();
    w.dps.register("dev-1", HUB);
    // Fresh enrollments are not re-checked at once; an old check is.
    let stored = record(&w, "dev-1").await.unwrap();
    let mut aged = stored.record.clone();
    aged.registration_checked_at = Some("2020-01-01T00:00:00Z".into());
    w.store.replace(&stored, &aged).await.unwrap();
    let device = w.service.device("dev-1", false).await.unwrap();
    assert_eq!(device.record.status(), Status::Assigned);
    assert_eq!(device.record.assigned_hub(), Some(HUB));
    let by_hub = Filter {
        hub: Some(crate::domain::HubName::parse(HUB).unwrap()),
        ..Filter::default()
    };
    assert_eq!(
        w.service.list(&by_hub, 10, None).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn live_device_calls_explain_why_they_cannot_reach_the_device() {
    let w = world();
    w.service.enroll(request("dev-1")).await.unwrap();
    let command = |_name: &str| CommandRequest {
        payload: json!({"n": 1}),
        timeout_seconds: None,
        connect_timeout_seconds: None,
    };
    let error = w
        .service
        .command("dev-1", "reboot", command("reboot"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ServiceError::Conflict {
                code: "deviceNotAssigned",
                ..
            }
        ),
        "{error:?}"
    );
    w.dps.register("dev-1", HUB);
    let stored = record(&w, "dev-1").await.unwrap();
    let mut registered = stored.record.clone();
    registered.registration = w.dps.registration("dev-1").await.unwrap();
    w.store.replace(&stored, &registered).await.unwrap();
    w.hubs.add_device(HUB, "dev-1", false);
    let error = w
        .service
        .command("dev-1", "reboot", command("reboot"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ServiceError::Conflict {
                code: "deviceOffline",
                ..
            }
        ),
        "{error:?}"
    );
    w.hubs
        .online
        .lock()
        .unwrap()
        .push((HUB.into(), "dev-1".into()));
    let answer = w
        .service
        .command("dev-1", "reboot", command("reboot"))
        .await
        .unwrap();
    assert_eq!(answer.payload["echo"]["n"], 1);
    let error = w
        .service
        .command("dev-1", "hang", command("hang"))
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::Timeout(_)), "{error:?}");
    let desired = w
        .service
        .update_desired(
            "dev-1",
            json!({"interval": 9}).as_object().cloned().unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(desired.desired["interval"], 9);
    let error = w
        .service
        .command("dev-1", "bad/name", command("x"))
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::Invalid(_)), "{error:?}");
}

#[tokio::test]
async fn an_import_reports_every_row_and_enrolls_the_valid_ones() {
    let w = world();
    w.service.enroll(request("existing")).await.unwrap();
    let mut csv = String::from("registrationId,customerId,serialNumber,tag.refuse\n");
    for i in 0..25 {
        csv.push_str(&format!("dev-{i},contoso,SN{i},\n"));
    }
    csv.push_str("existing,contoso,,\n");
    csv.push_str("bad id,contoso,,\n");
    csv.push_str("dev-3,contoso,,\n");
    csv.push_str("refused,contoso,,yes\n");
    let rows = parse_csv(csv.as_bytes()).unwrap();
    let results = w.service.import(rows).await;
    assert_eq!(results.len(), 29);
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    assert_eq!(count(Outcome::Created), 25);
    assert_eq!(count(Outcome::Exists), 1);
    assert_eq!(count(Outcome::Invalid), 3, "{results:?}");
    assert!(
        results[27].message.as_deref().unwrap().contains("row 4"),
        "{:?}",
        results[27]
    );
    assert!(
        record(&w, "refused").await.is_none(),
        "a refused row leaves no record"
    );
    assert!(w.dps.has("dev-24"));
    assert!(results.windows(2).all(|p| p[0].row < p[1].row));
}

#[tokio::test]
async fn an_import_whose_dps_calls_fail_can_simply_be_run_again() {
    let w = world();
    let csv = "registrationId,customerId\na,c\nb,c\n";
    w.dps.faults.fail("create_many", 1);
    let results = w.service.import(parse_csv(csv.as_bytes()).unwrap()).await;
    assert!(
        results.iter().all(|r| r.outcome == Outcome::Failed),
        "{results:?}"
    );
    let results = w.service.import(parse_csv(csv.as_bytes()).unwrap()).await;
    assert!(
        results.iter().all(|r| r.outcome == Outcome::Created),
        "{results:?}"
    );
    assert!(w
        .store
        .all()
        .iter()
        .all(|s| s.record.sync == DpsSync::Complete));
}

/// An enrolled device that registered on HUB and has its identity there.
async fn registered(w: &World, id: &str) {
    w.service.enroll(request(id)).await.unwrap();
    w.dps.register(id, HUB);
    w.hubs.add_device(HUB, id, false);
}

/// Whether the device is gone everywhere: record, enrollment, registration, hub identity.
async fn gone_everywhere(w: &World, id: &str) -> bool {
    record(w, id).await.is_none()
        && !w.dps.has(id)
        && w.dps.registration(id).await.unwrap().is_none()
        && !w.hubs.has_device(HUB, id)
}

#[tokio::test]
async fn a_failed_dps_delete_leaves_the_device_whole_and_marked_until_repair_removes_it() {
    let w = world();
    registered(&w, "dev-1").await;
    w.dps.faults.fail("delete", 1);
    let error = w.service.remove("dev-1", None).await.unwrap_err();
    assert!(unavailable(&error, Upstream::Dps), "{error:?}");
    assert!(w.dps.has("dev-1"), "the enrollment is still there");
    assert!(
        w.hubs.has_device(HUB, "dev-1"),
        "nothing after it was touched"
    );
    assert!(w.dps.registration("dev-1").await.unwrap().is_some());
    assert_eq!(
        record(&w, "dev-1").await.unwrap().record.status(),
        Status::Deleting
    );
    assert_eq!(w.service.repair_pending(100).await.unwrap().repaired, 1);
    assert!(gone_everywhere(&w, "dev-1").await);
}

#[tokio::test]
async fn a_failed_registration_delete_keeps_the_hub_known_and_the_clients_retry_finishes() {
    let w = world();
    registered(&w, "dev-1").await;
    w.dps.faults.fail("delete_registration", 1);
    let error = w.service.remove("dev-1", None).await.unwrap_err();
    assert!(unavailable(&error, Upstream::Dps), "{error:?}");
    assert!(!w.dps.has("dev-1") && !w.hubs.has_device(HUB, "dev-1"));
    assert_eq!(
        w.dps
            .registration("dev-1")
            .await
            .unwrap()
            .unwrap()
            .assigned_hub
            .as_deref(),
        Some(HUB),
        "the registration, which names the hub, goes last"
    );
    assert_eq!(
        record(&w, "dev-1").await.unwrap().record.status(),
        Status::Deleting
    );
    w.service.remove("dev-1", None).await.unwrap();
    assert!(gone_everywhere(&w, "dev-1").await);
}

#[tokio::test]
async fn a_failed_registration_read_stops_a_delete_before_it_changes_anything_in_dps() {
    let w = world();
    registered(&w, "dev-1").await;
    w.dps.faults.fail("registration", 1);
    let error = w.service.remove("dev-1", None).await.unwrap_err();
    assert!(unavailable(&error, Upstream::Dps), "{error:?}");
    assert!(w.dps.has("dev-1") && w.hubs.has_device(HUB, "dev-1"));
    assert_eq!(
        record(&w, "dev-1").await.unwrap().record.status(),
        Status::Deleting
    );
    w.service.repair_pending(100).await.unwrap();
    assert!(gone_everywhere(&w, "dev-1").await);
}

#[tokio::test]
async fn a_failed_registration_read_answers_the_record_as_stored_and_the_next_read_learns_it() {
    let w = world();
    w.service.enroll(request("dev-1")).await.unwrap();
    w.dps.register("dev-1", HUB);
    let stored = record(&w, "dev-1").await.unwrap();
    let mut aged = stored.record.clone();
    aged.registration_checked_at = Some("2020-01-01T00:00:00Z".into());
    w.store.replace(&stored, &aged).await.unwrap();
    let before = record(&w, "dev-1").await.unwrap();
    w.dps.faults.fail("registration", 1);
    let read = w.service.device("dev-1", false).await.unwrap();
    assert_eq!(read.record.status(), Status::Enrolled, "as stored");
    assert_eq!(
        record(&w, "dev-1").await.unwrap(),
        before,
        "nothing written"
    );
    let read = w.service.device("dev-1", false).await.unwrap();
    assert_eq!(read.record.status(), Status::Assigned);
}

#[tokio::test]
async fn a_failed_key_read_answers_unavailable_and_changes_neither_record_nor_key() {
    let w = world();
    w.service.enroll(request("dev-1")).await.unwrap();
    let before = record(&w, "dev-1").await.unwrap();
    let key = w.dps.enrollment("dev-1").unwrap().key;
    w.dps.faults.fail("keys", 1);
    let error = w.service.provisioning_code("dev-1").await.err().unwrap();
    assert!(unavailable(&error, Upstream::Dps), "{error:?}");
    assert_eq!(record(&w, "dev-1").await.unwrap(), before);
    let answer = w.service.provisioning_code("dev-1").await.unwrap();
    let code = iot_credentials::ProvisioningCode::parse(&answer.code.expose()).unwrap();
    assert_eq!(code.device_key, key, "the retry carries the same key");
}

#[tokio::test]
async fn a_failed_record_insert_leaves_no_record_and_no_dps_enrollment() {
    let w = world();
    w.store.fail("insert", 1);
    let error = w.service.enroll(request("dev-1")).await.unwrap_err();
    assert!(unavailable(&error, Upstream::Storage), "{error:?}");
    assert!(record(&w, "dev-1").await.is_none());
    assert!(
        !w.dps.has("dev-1"),
        "DPS is not called before the record exists"
    );
    let stored = w.service.enroll(request("dev-1")).await.unwrap();
    assert_eq!(stored.record.sync, DpsSync::Complete);
    assert!(w.dps.has("dev-1"));
}

#[tokio::test]
async fn a_failed_record_delete_leaves_a_marked_record_that_repair_or_a_new_enrollment_finishes() {
    for finish_by_enrolling_again in [false, true] {
        let w = world();
        registered(&w, "dev-1").await;
        w.store.fail("delete", 1);
        let error = w.service.remove("dev-1", None).await.unwrap_err();
        assert!(unavailable(&error, Upstream::Storage), "{error:?}");
        assert!(!w.dps.has("dev-1") && !w.hubs.has_device(HUB, "dev-1"));
        assert!(w.dps.registration("dev-1").await.unwrap().is_none());
        assert_eq!(
            record(&w, "dev-1").await.unwrap().record.status(),
            Status::Deleting,
            "the record says the device is being deleted"
        );
        if finish_by_enrolling_again {
            let stored = w.service.enroll(request("dev-1")).await.unwrap();
            assert_eq!(stored.record.status(), Status::Enrolled);
            assert!(w.dps.has("dev-1"));
        } else {
            w.service.repair_pending(100).await.unwrap();
            assert!(gone_everywhere(&w, "dev-1").await);
        }
    }
}

#[tokio::test]
async fn a_failed_history_write_does_not_fail_the_enrollment() {
    let w = world();
    w.store.fail("history", 1);
    let stored = w.service.enroll(request("dev-1")).await.unwrap();
    assert_eq!(stored.record.sync, DpsSync::Complete);
    assert!(w.dps.has("dev-1"));
    let (history, _) = w.service.history("dev-1", 10, None).await.unwrap();
    assert!(
        history.is_empty(),
        "the entry is lost, the enrollment is not"
    );
}

#[tokio::test]
async fn a_valid_change_to_a_record_full_of_reports_cuts_the_reports_rather_than_failing() {
    use crate::domain::events::Stamp;
    use crate::domain::hub_report::ReportedValue;
    let w = world();
    w.service.enroll(request("dev-1")).await.unwrap();
    let stored = record(&w, "dev-1").await.unwrap();
    let mut full = stored.record.clone();
    for key in [
        "provisioning",
        "firmware",
        "status",
        "acknowledgedDesiredVersion",
    ] {
        full.live.reported.insert(
            key.into(),
            ReportedValue {
                value: json!({ "detail": "r".repeat(4000) }),
                version: 1,
                at: Stamp::now(),
                hub: HUB.into(),
                truncated_from: None,
            },
        );
    }
    w.store.replace(&stored, &full).await.unwrap();
    let attributes: serde_json::Map<String, serde_json::Value> = (0..7)
        .map(|n| (format!("a{n}"), json!("a".repeat(1000))))
        .collect();
    let patch: EnrollmentPatch = serde_json::from_value(json!({
        "asset": { "attributes": attributes },
        "initialTwin": { "desiredProperties": { "notes": "d".repeat(15_000) } },
    }))
    .unwrap();
    let changed = w.service.change("dev-1", patch, None).await.unwrap();
    assert_eq!(changed.record.asset.attributes.len(), 7);
    assert!(!changed.record.live.truncated().is_empty(), "the cut shows");
    assert!(serde_json::to_string(&changed.record).unwrap().len() <= 30 * 1024);
}

/// A registered device (its registration known to the record), online on HUB or not.
async fn assigned(w: &World, id: &str, online: bool) -> crate::storage::Stored {
    w.service.enroll(request(id)).await.unwrap();
    w.dps.register(id, HUB);
    w.hubs.add_device(HUB, id, online);
    w.service.device(id, true).await.unwrap()
}

/// What the device reports once it re-provisioned with the rotation's key.
async fn report_rotation_done(w: &World, id: &str, rotation_id: &str) -> crate::storage::Stored {
    let stored = record(w, id).await.unwrap();
    let mut reported = stored.record.clone();
    reported.live.reported.insert(
        crate::domain::rotation::REPORTED_PROPERTY.into(),
        crate::domain::hub_report::ReportedValue {
            value: json!({ "id": rotation_id, "status": "completed" }),
            version: 7,
            at: crate::domain::events::Stamp::now(),
            hub: HUB.into(),
            truncated_from: None,
        },
    );
    let etag = w.store.replace(&stored, &reported).await.unwrap();
    crate::storage::Stored {
        record: reported,
        etag,
    }
}

fn pending(stored: &crate::storage::Stored) -> crate::domain::rotation::KeyRotation {
    stored
        .record
        .key_rotation
        .clone()
        .expect("a rotation is pending")
}

#[tokio::test]
async fn a_rotation_hands_the_device_a_key_in_the_free_slot_and_retires_the_old_one_once_reported()
{
    use crate::domain::rotation::{KeySlot, RotationStep};
    let w = world();
    assigned(&w, "dev-1", true).await;
    let before = w.dps.enrollment("dev-1").unwrap().keys();

    let started = w.service.rotate_key("dev-1").await.unwrap();
    let rotation = pending(&started);
    assert_eq!(rotation.step, RotationStep::Delivered);
    assert_eq!(rotation.slot, KeySlot::Secondary);
    let staged = w.dps.enrollment("dev-1").unwrap().keys();
    assert_eq!(
        staged.primary, before.primary,
        "the device's key keeps working"
    );
    assert_ne!(
        staged.secondary, before.secondary,
        "a new key in the free slot"
    );
    let calls = w.hubs.calls.lock().unwrap().clone();
    let (hub, device, call) = calls.last().unwrap();
    assert_eq!((hub.as_str(), device.as_str()), (HUB, "dev-1"));
    assert_eq!(call.name, "RotateKey");
    assert_eq!(call.payload["rotationId"], rotation.id.as_str());
    assert_eq!(call.payload["key"], staged.secondary.expose_base64());
    assert!(
        !format!("{call:?}").contains(staged.secondary.expose_base64()),
        "a method call's Debug shows no payload"
    );
    let stored_text = serde_json::to_string(&started.record).unwrap();
    assert!(!stored_text.contains(staged.secondary.expose_base64()));
    assert!(!stored_text.contains(before.primary.expose_base64()));

    // The device re-provisioned with the new key and says so.
    let reported = report_rotation_done(&w, "dev-1", &rotation.id).await;
    let done = w
        .service
        .advance_rotation(reported, super::rotation::Delivery::No)
        .await
        .unwrap();
    assert!(done.record.key_rotation.is_none());
    assert_eq!(done.record.key_slot, KeySlot::Secondary);
    assert_eq!(
        done.record.last_key_rotation.as_ref().unwrap().id,
        rotation.id
    );
    let after = w.dps.enrollment("dev-1").unwrap().keys();
    assert_eq!(
        after.secondary, staged.secondary,
        "the device's new key stays"
    );
    assert_ne!(after.primary, before.primary, "the old key is retired");
    assert_eq!(
        w.hubs.keys.lock().unwrap()[&(HUB.to_owned(), "dev-1".to_owned())],
        (after.primary.clone(), after.secondary.clone()),
        "the hub identity holds the enrollment's keys, not the old one"
    );
    // Codes now carry the key the device holds.
    let code = w.service.provisioning_code("dev-1").await.unwrap();
    assert_eq!(code.code.device_key, after.secondary);
    let (history, _) = w.service.history("dev-1", 50, None).await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    for kind in ["keyRotationStarted", "keyDelivered", "keyRotationCompleted"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    // The next rotation goes the other way.
    let next = w.service.rotate_key("dev-1").await.unwrap();
    assert_eq!(pending(&next).slot, KeySlot::Primary);
}

#[tokio::test]
async fn an_offline_device_keeps_its_rotation_staged_until_it_is_back() {
    use crate::domain::rotation::RotationStep;
    let w = world();
    assigned(&w, "dev-1", false).await;
    let before = w.dps.enrollment("dev-1").unwrap().keys();
    let started = w.service.rotate_key("dev-1").await.unwrap();
    let rotation = pending(&started);
    assert_eq!(rotation.step, RotationStep::Staged);
    assert_eq!(
        rotation.last_error.as_deref(),
        Some("the device is not connected")
    );
    assert_eq!(w.dps.enrollment("dev-1").unwrap().key, before.primary);

    let again = w.service.rotate_key("dev-1").await.unwrap_err();
    assert!(
        matches!(
            again,
            ServiceError::Conflict {
                code: "rotationPending",
                ..
            }
        ),
        "{again:?}"
    );
    let code = w.service.provisioning_code("dev-1").await.err().unwrap();
    assert!(
        matches!(
            code,
            ServiceError::Conflict {
                code: "rotationPending",
                ..
            }
        ),
        "{code:?}"
    );
    // Still offline: the repair pass tries, and the rotation waits.
    let report = w.service.repair_pending(100).await.unwrap();
    assert_eq!(report.repaired, 0);
    assert_eq!(
        pending(&record(&w, "dev-1").await.unwrap()).step,
        RotationStep::Staged
    );
    // Back online: the repair pass hands the key over.
    w.hubs
        .online
        .lock()
        .unwrap()
        .push((HUB.into(), "dev-1".into()));
    let report = w.service.repair_pending(100).await.unwrap();
    assert_eq!(report.repaired, 1);
    let delivered = pending(&record(&w, "dev-1").await.unwrap());
    assert_eq!(delivered.step, RotationStep::Delivered);
    assert_eq!(
        delivered.id, rotation.id,
        "the same rotation, not a new one"
    );
    assert_eq!(
        delivered.deliveries, 3,
        "the request, the offline pass, this pass"
    );
}

#[tokio::test]
async fn rotations_are_refused_for_unknown_unregistered_or_disabled_enrollments() {
    let w = world();
    let unknown = w.service.rotate_key("nobody").await.unwrap_err();
    assert!(matches!(unknown, ServiceError::NotFound(_)), "{unknown:?}");
    w.service.enroll(request("dev-1")).await.unwrap();
    let unregistered = w.service.rotate_key("dev-1").await.unwrap_err();
    assert!(
        matches!(
            unregistered,
            ServiceError::Conflict {
                code: "deviceNotAssigned",
                ..
            }
        ),
        "{unregistered:?}"
    );
    assigned(&w, "dev-2", true).await;
    let patch: EnrollmentPatch = serde_json::from_value(json!({ "enabled": false })).unwrap();
    w.service.change("dev-2", patch, None).await.unwrap();
    let keys = w.dps.enrollment("dev-2").unwrap().keys();
    let disabled = w.service.rotate_key("dev-2").await.unwrap_err();
    assert!(
        matches!(
            disabled,
            ServiceError::Conflict {
                code: "enrollmentDisabled",
                ..
            }
        ),
        "{disabled:?}"
    );
    assert_eq!(
        w.dps.enrollment("dev-2").unwrap().keys(),
        keys,
        "nothing changed"
    );
    assert!(record(&w, "dev-2")
        .await
        .unwrap()
        .record
        .key_rotation
        .is_none());
}

#[tokio::test]
async fn a_failure_at_any_rotation_step_leaves_the_step_and_the_repair_pass_finishes_it() {
    use crate::domain::rotation::RotationStep;
    let w = world();
    assigned(&w, "dev-1", true).await;
    let before = w.dps.enrollment("dev-1").unwrap().keys();

    // DPS fails while staging: the rotation is accepted and stays there, with the reason; the
    // keys are as they were.
    w.dps.faults.fail("replace_key", 1);
    let answered = w.service.rotate_key("dev-1").await.unwrap();
    assert_eq!(pending(&answered).step, RotationStep::Staging);
    assert_eq!(
        pending(&answered).last_error.as_deref(),
        Some("DPS is unavailable")
    );
    let stuck = record(&w, "dev-1").await.unwrap();
    assert_eq!(stuck, answered);
    assert!(stuck.record.has_unfinished_work());
    assert_eq!(w.dps.enrollment("dev-1").unwrap().keys(), before);
    // The key read before delivery fails: staged, not delivered.
    w.dps.faults.fail("keys", 1);
    assert_eq!(w.service.repair_pending(100).await.unwrap().failed, 1);
    assert_eq!(
        pending(&record(&w, "dev-1").await.unwrap()).step,
        RotationStep::Staged
    );
    assert_eq!(w.service.repair_pending(100).await.unwrap().repaired, 1);
    let rotation = pending(&record(&w, "dev-1").await.unwrap());
    assert_eq!(rotation.step, RotationStep::Delivered);

    // The report arrives; retiring fails at DPS, then at the hub, and is finished by repair.
    report_rotation_done(&w, "dev-1", &rotation.id).await;
    w.dps.faults.fail("replace_key", 1);
    assert_eq!(w.service.repair_pending(100).await.unwrap().failed, 1);
    assert_eq!(
        pending(&record(&w, "dev-1").await.unwrap()).step,
        RotationStep::Retiring
    );
    assert_eq!(
        w.dps.enrollment("dev-1").unwrap().key,
        before.primary,
        "not yet retired"
    );
    w.hubs.faults.fail("set_device_keys", 1);
    assert_eq!(w.service.repair_pending(100).await.unwrap().failed, 1);
    assert_eq!(
        pending(&record(&w, "dev-1").await.unwrap()).step,
        RotationStep::Retiring
    );
    assert_eq!(w.service.repair_pending(100).await.unwrap().repaired, 1);
    let done = record(&w, "dev-1").await.unwrap();
    assert!(done.record.key_rotation.is_none());
    assert!(!done.record.has_unfinished_work());
    let after = w.dps.enrollment("dev-1").unwrap().keys();
    assert_ne!(after.primary, before.primary);
    assert_eq!(
        w.hubs.keys.lock().unwrap()[&(HUB.to_owned(), "dev-1".to_owned())],
        (after.primary.clone(), after.secondary.clone())
    );
    assert_eq!(
        w.service.repair_pending(100).await.unwrap(),
        Default::default()
    );
}
