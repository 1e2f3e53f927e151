//! Users, second factors, tenants, OAuth clients and signing keys.

use super::{backends, ctx};
use crate::{ClientRecord, KeyRecord, NewUser, StoreError, TenantRecord, UserRecord};
use ehr_core::TenantId;
use serde_json::json;

fn new_user(id: &str, username: &str, now: i64) -> NewUser {
    NewUser {
        id: id.into(),
        username: username.into(),
        display_name: format!("User {username}"),
        password_hash: format!("$argon2id$hash-of-{username}"),
        fhir_user: None,
        roles: vec!["doctor".into(), "nurse".into()],
        now,
    }
}

fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

#[tokio::test]
async fn users_are_created_read_updated_and_unique_per_tenant() {
    for backend in backends().await {
        let db = backend.open().await;
        let tx = db.store.write(&ctx("a")).await.unwrap();
        let alice = tx.create_user(&new_user("u1", "alice", 100)).await.unwrap();
        assert_eq!(alice.roles, ["doctor", "nurse"]);
        assert!(alice.active && !alice.mfa_confirmed && alice.last_login_at.is_none());
        assert!(matches!(tx.create_user(&new_user("u2", "alice", 100)).await, Err(StoreError::AlreadyExists)));
        assert!(matches!(tx.create_user(&new_user("u1", "alicia", 100)).await, Err(StoreError::AlreadyExists)));
        tx.create_user(&new_user("u3", "bob", 100)).await.unwrap();
        tx.create_user(&new_user("u4", "aaron", 100)).await.unwrap();
        let mut bad = new_user("u5", "eve", 100);
        bad.roles = vec!["two words".into()];
        assert!(matches!(tx.create_user(&bad).await, Err(StoreError::InvalidValue(_))));
        tx.commit().await.unwrap();

        // The same username in another tenant is another user.
        let tx = db.store.write(&ctx("b")).await.unwrap();
        tx.create_user(&new_user("u1", "alice", 100)).await.unwrap();
        tx.commit().await.unwrap();

        let tx = db.store.write(&ctx("a")).await.unwrap();
        assert_eq!(tx.user("u1").await.unwrap().as_ref(), Some(&alice));
        assert_eq!(tx.user_by_username("alice").await.unwrap().as_ref(), Some(&alice));
        assert_eq!(tx.user("nobody").await.unwrap(), None);
        let names: Vec<String> = tx.users().await.unwrap().into_iter().map(|u| u.username).collect();
        assert_eq!(names, ["aaron", "alice", "bob"]);

        assert!(tx.set_user_roles("u1", &["admin".into()], 200).await.unwrap());
        assert!(tx.set_user_active("u1", false, 201).await.unwrap());
        assert!(tx.set_password_hash("u1", "$argon2id$new", 202).await.unwrap());
        assert!(tx.record_login("u1", 203).await.unwrap());
        assert!(!tx.set_user_roles("nobody", &["admin".into()], 200).await.unwrap());
        assert!(!tx.set_user_active("nobody", false, 200).await.unwrap());
        assert!(!tx.set_password_hash("nobody", "x", 200).await.unwrap());
        assert!(!tx.record_login("nobody", 200).await.unwrap());
        assert!(matches!(tx.set_user_roles("u1", &[String::new()], 200).await, Err(StoreError::InvalidValue(_))));
        tx.commit().await.unwrap();

        let tx = db.store.read(&ctx("a")).await.unwrap();
        let u = tx.user("u1").await.unwrap().unwrap();
        assert_eq!(u.roles, ["admin"]);
        assert!(!u.active);
        assert_eq!(u.password_hash, "$argon2id$new");
        assert_eq!((u.created_at, u.updated_at, u.last_login_at), (100, 202, Some(203)));
        tx.commit().await.unwrap();
        db.finish().await;
    }
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_users() {
    for backend in backends().await {
        let db = backend.open().await;
        let tx = db.store.write(&ctx("a")).await.unwrap();
        tx.create_user(&new_user("ua", "alice", 100)).await.unwrap();
        tx.set_mfa_secret("ua", Some("SECRET"), 100).await.unwrap();
        tx.replace_recovery_codes("ua", &["h1".into()]).await.unwrap();
        tx.commit().await.unwrap();

        let tx = db.store.write(&ctx("b")).await.unwrap();
        assert_eq!(tx.user("ua").await.unwrap(), None);
        assert_eq!(tx.user_by_username("alice").await.unwrap(), None);
        assert!(tx.users().await.unwrap().is_empty());
        assert!(tx.unused_users(i64::MAX).await.unwrap().is_empty());
        assert!(!tx.set_user_active("ua", false, 200).await.unwrap());
        assert!(!tx.consume_totp_step("ua", 1).await.unwrap());
        assert!(!tx.replace_recovery_codes("ua", &["h2".into()]).await.unwrap());
        assert!(!tx.consume_recovery_code("ua", "h1", 200).await.unwrap());
        assert_eq!(tx.remaining_recovery_codes("ua").await.unwrap(), 0);
        // A statement without the tenant predicate: PostgreSQL's policy still confines it.
        let all = tx.query("SELECT id FROM users", Vec::new()).await.unwrap();
        if db.is_postgres() {
            assert!(all.is_empty(), "row-level security must hide tenant a's users from tenant b");
        }
        tx.commit().await.unwrap();

        if db.is_postgres() {
            // A system transaction belongs to no tenant: tenant tables are empty to it.
            let sys = db.store.system_read().await.unwrap();
            for table in ["users", "recovery_codes"] {
                assert!(sys.query(&format!("SELECT 1 AS one FROM {table}"), Vec::new()).await.unwrap().is_empty());
            }
            sys.commit().await.unwrap();
        }

        let tx = db.store.read(&ctx("a")).await.unwrap();
        assert_eq!(tx.user("ua").await.unwrap().map(|u| u.active), Some(true));
        assert_eq!(tx.remaining_recovery_codes("ua").await.unwrap(), 1);
        tx.commit().await.unwrap();
        db.finish().await;
    }
}

#[tokio::test]
async fn totp_steps_are_single_use_and_monotonic() {
    for backend in backends().await {
        let db = backend.open().await;
        let tx = db.store.write(&ctx("a")).await.unwrap();
        tx.create_user(&new_user("u1", "alice", 100)).await.unwrap();
        // No secret yet: nothing to confirm.
        assert!(!tx.confirm_mfa("u1", 50, 100).await.unwrap());
        assert!(tx.set_mfa_secret("u1", Some("JBSWY3DPEHPK3PXP"), 100).await.unwrap());
        assert!(tx.confirm_mfa("u1", 100, 101).await.unwrap());
        let u = tx.user("u1").await.unwrap().unwrap();
        assert_eq!(
            (u.mfa_secret.as_deref(), u.mfa_confirmed, u.mfa_last_step),
            (Some("JBSWY3DPEHPK3PXP"), true, Some(100))
        );

        assert!(!tx.consume_totp_step("u1", 100).await.unwrap(), "the confirming code is spent");
        assert!(tx.consume_totp_step("u1", 101).await.unwrap());
        assert!(!tx.consume_totp_step("u1", 101).await.unwrap(), "a code is accepted once");
        assert!(!tx.consume_totp_step("u1", 99).await.unwrap(), "an older step never again");
        assert!(tx.consume_totp_step("u1", 105).await.unwrap());
        assert!(!tx.consume_totp_step("u1", 103).await.unwrap());
        assert!(!tx.confirm_mfa("u1", 105, 102).await.unwrap());
        assert!(!tx.consume_totp_step("nobody", 1_000).await.unwrap());
        assert_eq!(tx.user("u1").await.unwrap().unwrap().mfa_last_step, Some(105));
        tx.commit().await.unwrap();

        // Two transactions (two gateway replicas) presenting the same code: the second waits for
        // the first (row lock on PostgreSQL, the single writer on SQLite) and then finds it spent.
        let first = db.store.write(&ctx("a")).await.unwrap();
        assert!(first.consume_totp_step("u1", 200).await.unwrap());
        let store = db.store.clone();
        let second = tokio::spawn(async move {
            let tx = store.write(&ctx("a")).await.unwrap();
            let ok = tx.consume_totp_step("u1", 200).await.unwrap();
            tx.commit().await.unwrap();
            ok
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        first.commit().await.unwrap();
        assert!(!second.await.unwrap());
        db.finish().await;
    }
}

#[tokio::test]
async fn recovery_codes_are_single_use_and_reset_with_mfa() {
    for backend in backends().await {
        let db = backend.open().await;
        let tx = db.store.write(&ctx("a")).await.unwrap();
        tx.create_user(&new_user("u1", "alice", 100)).await.unwrap();
        tx.set_mfa_secret("u1", Some("S1"), 100).await.unwrap();
        assert!(!tx.replace_recovery_codes("nobody", &["h1".into()]).await.unwrap());
        assert!(tx.replace_recovery_codes("u1", &["h1".into(), "h2".into(), "h3".into(), "h3".into()]).await.unwrap());
        assert_eq!(tx.remaining_recovery_codes("u1").await.unwrap(), 3);
        assert!(tx.consume_recovery_code("u1", "h1", 200).await.unwrap());
        assert!(!tx.consume_recovery_code("u1", "h1", 201).await.unwrap(), "a code is spent once");
        assert!(!tx.consume_recovery_code("u1", "nope", 201).await.unwrap());
        assert_eq!(tx.remaining_recovery_codes("u1").await.unwrap(), 2);

        // A new set replaces the old one entirely.
        assert!(tx.replace_recovery_codes("u1", &["h4".into()]).await.unwrap());
        assert!(!tx.consume_recovery_code("u1", "h2", 202).await.unwrap());
        assert_eq!(tx.remaining_recovery_codes("u1").await.unwrap(), 1);

        // Re-enrolling keeps the codes; resetting MFA removes secret and codes.
        assert!(tx.set_mfa_secret("u1", Some("S2"), 300).await.unwrap());
        assert_eq!(tx.remaining_recovery_codes("u1").await.unwrap(), 1);
        assert!(tx.confirm_mfa("u1", 10, 301).await.unwrap());
        assert!(tx.set_mfa_secret("u1", None, 302).await.unwrap());
        assert_eq!(tx.remaining_recovery_codes("u1").await.unwrap(), 0);
        assert!(!tx.consume_recovery_code("u1", "h4", 303).await.unwrap());
        let u = tx.user("u1").await.unwrap().unwrap();
        assert_eq!((u.mfa_secret, u.mfa_confirmed, u.mfa_last_step, u.updated_at), (None, false, None, 302));
        assert!(!tx.set_mfa_secret("nobody", None, 303).await.unwrap());
        tx.commit().await.unwrap();
        db.finish().await;
    }
}

#[tokio::test]
async fn unused_accounts_are_reported() {
    for backend in backends().await {
        let db = backend.open().await;
        let tx = db.store.write(&ctx("a")).await.unwrap();
        for (id, created) in [("never", 100), ("stale", 100), ("fresh", 900), ("recent", 100), ("disabled", 100)] {
            tx.create_user(&new_user(id, id, created)).await.unwrap();
        }
        tx.record_login("stale", 500).await.unwrap();
        tx.record_login("recent", 1_000).await.unwrap();
        tx.set_user_active("disabled", false, 100).await.unwrap();
        let unused: Vec<String> = tx.unused_users(800).await.unwrap().into_iter().map(|u| u.id).collect();
        assert_eq!(unused, ["never", "stale"]);
        tx.commit().await.unwrap();
        db.finish().await;
    }
}

#[tokio::test]
async fn tenants_clients_and_signing_keys() {
    for backend in backends().await {
        let db = backend.open().await;
        let sys = db.store.system_write().await.unwrap();
        let t1 = TenantRecord { id: tenant("t1"), name: "Hospital 1".into(), active: true, created_at: 10 };
        let t2 = TenantRecord { id: tenant("t2"), name: "Hospital 2".into(), active: true, created_at: 11 };
        sys.create_tenant(&t2).await.unwrap();
        sys.create_tenant(&t1).await.unwrap();
        assert!(matches!(sys.create_tenant(&t1).await, Err(StoreError::AlreadyExists)));
        assert_eq!(sys.tenant(&tenant("t1")).await.unwrap().as_ref(), Some(&t1));
        assert_eq!(sys.tenant(&tenant("t3")).await.unwrap(), None);
        assert!(sys.set_tenant_active(&tenant("t2"), false).await.unwrap());
        assert!(!sys.set_tenant_active(&tenant("t3"), false).await.unwrap());
        let tenants = sys.tenants().await.unwrap();
        assert_eq!(
            tenants.iter().map(|t| (t.id.as_str(), t.active)).collect::<Vec<_>>(),
            [("t1", true), ("t2", false)]
        );
        assert_eq!(sys.audit_tenants().await.unwrap(), [tenant("t1"), tenant("t2")]);

        let web = ClientRecord {
            client_id: "web".into(),
            tenant: tenant("t1"),
            name: "Ward app".into(),
            kind: "public".into(),
            redirect_uris: vec!["https://ward.example/cb".into(), "http://localhost:3000/cb".into()],
            jwks: None,
            scope: "openid user/*.rs".into(),
            active: true,
            created_at: 20,
        };
        let lab = ClientRecord {
            client_id: "lab".into(),
            kind: "backend".into(),
            redirect_uris: Vec::new(),
            jwks: Some(json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "x", "y": "y", "kid": "k"}]})),
            scope: "system/Observation.c".into(),
            ..web.clone()
        };
        sys.create_client(&web).await.unwrap();
        sys.create_client(&lab).await.unwrap();
        assert!(matches!(sys.create_client(&web).await, Err(StoreError::AlreadyExists)));
        assert_eq!(sys.client("web").await.unwrap().as_ref(), Some(&web));
        assert_eq!(sys.client("lab").await.unwrap().as_ref(), Some(&lab));
        assert_eq!(sys.client("none").await.unwrap(), None);
        assert_eq!(sys.clients_of(&tenant("t1")).await.unwrap(), [lab.clone(), web.clone()]);
        assert!(sys.clients_of(&tenant("t2")).await.unwrap().is_empty());
        assert!(sys.set_client_active("web", false).await.unwrap());
        assert!(!sys.set_client_active("none", false).await.unwrap());

        let key = |kid: &str, created_at: i64| KeyRecord {
            kid: kid.into(),
            private_pem: "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n".into(),
            public_jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid}),
            created_at,
            retire_at: created_at + 90,
            expires_at: created_at + 180,
        };
        sys.insert_signing_key(&key("k2", 200)).await.unwrap();
        sys.insert_signing_key(&key("k1", 100)).await.unwrap();
        assert!(matches!(sys.insert_signing_key(&key("k1", 300)).await, Err(StoreError::AlreadyExists)));
        assert!(sys.retire_signing_key("k1", 150, 250).await.unwrap());
        assert!(!sys.retire_signing_key("none", 150, 250).await.unwrap());
        sys.commit().await.unwrap();

        let sys = db.store.system_read().await.unwrap();
        let keys = sys.signing_keys().await.unwrap();
        assert_eq!(keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(), ["k1", "k2"]);
        assert_eq!((keys[0].retire_at, keys[0].expires_at), (150, 250));
        assert_eq!(keys[1], key("k2", 200));
        assert_eq!(sys.client("web").await.unwrap().map(|c| c.active), Some(false));
        sys.commit().await.unwrap();
        db.finish().await;
    }
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let user = UserRecord {
        id: "u1".into(),
        username: "alice".into(),
        display_name: "Alice".into(),
        password_hash: "$argon2id$SECRET-HASH".into(),
        roles: vec!["doctor".into()],
        active: true,
        created_at: 1,
        updated_at: 1,
        last_login_at: None,
        mfa_secret: Some("SECRET-TOTP".into()),
        mfa_confirmed: true,
        mfa_last_step: Some(3),
        fhir_user: None,
    };
    let key = KeyRecord {
        kid: "k1".into(),
        private_pem: "SECRET-PEM".into(),
        public_jwk: json!({}),
        created_at: 1,
        retire_at: 2,
        expires_at: 3,
    };
    let new = new_user("u1", "alice", 1);
    for text in [format!("{user:?}"), format!("{key:?}"), format!("{new:?}")] {
        assert!(!text.contains("SECRET") && !text.contains("argon2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
