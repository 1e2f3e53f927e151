//! PostgreSQL only: row-level security is a second wall behind the tenant predicate.
//! (Run by `.ci/run` with `TEST_BACKEND=postgres`; excluded from the SQLite run.)

use ehr_testkit::{TestApp, patient};
use sea_orm::{ConnectionTrait, Database, Statement, TransactionTrait};

#[tokio::test]
async fn row_level_security_hides_other_tenants_rows_from_unscoped_queries() {
    assert_eq!(ehr_testkit::backend(), "postgres", "this module runs with TEST_BACKEND=postgres");
    let app = TestApp::spawn().await;
    app.create(&patient("A", "B", "1990-01-01", "RLS")).await;
    let db = Database::connect(app.database_url.as_str()).await.unwrap();
    let count = |sql: &'static str| {
        let db = &db;
        async move {
            let txn = db.begin().await.unwrap();
            txn.execute_unprepared("SET LOCAL ROLE ehr_app").await.unwrap();
            txn.execute_unprepared("SELECT set_config('ehr.tenant', 'someone-else', true)").await.unwrap();
            let row = txn.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
            let n: i64 = row.try_get_by_index(0).unwrap();
            n
        }
    };
    // A query that "forgot" its tenant predicate still sees nothing of this tenant.
    assert_eq!(count("SELECT COUNT(*) FROM resources").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM sp_token").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM resource_history").await, 0);
    // The gateway's tenant tables too: the audit chain and the accounts.
    app.gateway.audit.flush().await;
    app.account("rls-user", &["clerk"]).await;
    assert_eq!(count("SELECT COUNT(*) FROM audit_chain").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM audit_head").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM users").await, 0);
    // And writing a row for another tenant than the transaction's is refused.
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared("SET LOCAL ROLE ehr_app").await.unwrap();
    txn.execute_unprepared("SELECT set_config('ehr.tenant', 'someone-else', true)").await.unwrap();
    let err = txn
        .execute_unprepared(&format!(
            "INSERT INTO resources (tenant_id, resource_type, id, version_id, last_updated, deleted, content) VALUES ('{}', 'Patient', 'x', 1, 0, 0, '{{}}')",
            app.tenant
        ))
        .await;
    assert!(err.is_err(), "RLS WITH CHECK must refuse a row of another tenant");
    // The owner's view (superuser, no role switch) confirms the row exists.
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) FROM resources WHERE resource_type = 'Patient'",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get_by_index::<i64>(0).unwrap(), 1);
}

#[tokio::test]
async fn a_cancelled_statement_is_a_timeout_not_an_internal_error() {
    assert_eq!(ehr_testkit::backend(), "postgres", "this module runs with TEST_BACKEND=postgres");
    let app = TestApp::spawn().await;
    let db = Database::connect(app.database_url.as_str()).await.unwrap();
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared("SET LOCAL statement_timeout = 1").await.unwrap();
    let err = txn.execute_unprepared("SELECT pg_sleep(1)").await.unwrap_err();
    let classified = ehr_store::StoreError::from(err);
    assert!(matches!(classified, ehr_store::StoreError::Timeout), "{classified:?}");
    let p: ehr_http::Problem = classified.into();
    assert_eq!(p.status(), 503);
}

#[tokio::test]
async fn the_single_statement_read_sets_the_tenant_before_reading() {
    assert_eq!(ehr_testkit::backend(), "postgres", "this module runs with TEST_BACKEND=postgres");
    let app = TestApp::spawn().await;
    let created = app.create(&patient("A", "B", "1990-01-01", "RO1")).await;
    let id = created["id"].as_str().unwrap();
    // One connection, so that the last check looks at the connection the reads ran on.
    let mut options = sea_orm::ConnectOptions::new(app.database_url.clone());
    options.max_connections(1).min_connections(1);
    let db = Database::connect(options).await.unwrap();
    let count = |tenant: String| {
        let db = &db;
        let sql = format!("SELECT COUNT(*) FROM ehr_read_current('{tenant}', 'ehr_app', '0', 'Patient', '{id}')");
        async move {
            let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        }
    };
    assert_eq!(count(app.tenant.clone()).await, 1);
    assert_eq!(count("someone-else".into()).await, 0);
    // The settings were transaction-local: the connection is back to no tenant and its own role.
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), "SELECT current_setting('ehr.tenant', true) IS NULL OR current_setting('ehr.tenant', true) = '', current_user = session_user"))
        .await
        .unwrap()
        .unwrap();
    assert!(row.try_get_by_index::<bool>(0).unwrap());
    assert!(row.try_get_by_index::<bool>(1).unwrap());
}

/// The database connection is encrypted when the URL asks for it (`sslmode=require`, as managed
/// PostgreSQL services demand): the store runs over TLS (rustls). Where the server has TLS off,
/// such a URL is refused at connect rather than silently sent in clear.
#[tokio::test]
async fn the_store_connects_over_tls_when_the_url_requires_it() {
    assert_eq!(ehr_testkit::backend(), "postgres", "this module runs with TEST_BACKEND=postgres");
    let url = ehr_testkit::fresh_postgres().await;
    let plain = Database::connect(url.as_str()).await.unwrap();
    let server_ssl: String = plain
        .query_one_raw(Statement::from_string(plain.get_database_backend(), "SHOW ssl"))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap();
    let tls_url = format!("{url}?sslmode=require");
    let mut config = ehr_store::StoreConfig::new(tls_url.clone());
    config.max_connections = 2;
    let connected = ehr_store::Store::connect(&config).await;
    if server_ssl == "on" {
        let store = connected.expect("the store connects with sslmode=require");
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
        let tls = Database::connect(tls_url.as_str()).await.unwrap();
        let row = tls
            .query_one_raw(Statement::from_string(
                tls.get_database_backend(),
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ))
            .await
            .unwrap()
            .unwrap();
        let (ssl, version): (bool, String) = (row.try_get_by_index(0).unwrap(), row.try_get_by_index(1).unwrap());
        assert!(ssl, "the connection is encrypted");
        assert!(version == "TLSv1.2" || version == "TLSv1.3", "{version}");
    } else {
        assert!(connected.is_err(), "sslmode=require against a server without TLS must fail");
    }
}
