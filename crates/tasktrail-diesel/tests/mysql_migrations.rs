//! MySQL's DDL is not transactional: a boot killed halfway through the
//! migration leaves some tables made and no version recorded. The next
//! boot must complete it, not fail on the tables already there.
#![cfg(all(feature = "mysql", feature = "testing"))]

use diesel::connection::SimpleConnection;
use diesel::Connection;
use tasktrail_core::{Storage, TaskFilter};
use tasktrail_diesel::{MysqlConnection, MysqlStorage, ScratchMysqlDatabase, MYSQL_MIGRATIONS};

/// The first statement of the migration, run by hand, as a process killed
/// right after it would have left the database (Diesel makes its migration
/// table before running any migration).
fn leave_a_migration_half_done(url: &str) {
    use diesel::migration::MigrationSource;
    let mut connection = MysqlConnection::establish(url).expect("connect");
    let migrations =
        MigrationSource::<diesel::mysql::Mysql>::migrations(&MYSQL_MIGRATIONS).expect("embedded");
    assert_eq!(migrations.len(), 1, "this test knows one MySQL migration");
    connection
        .batch_execute(
            "CREATE TABLE __diesel_schema_migrations (\
               version VARCHAR(50) PRIMARY KEY NOT NULL, \
               run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
        )
        .expect("the migration table");
    let up = include_str!("../../../migrations/mysql/2026-11-29-000000_create_tasktrail/up.sql");
    let start = up.find("CREATE TABLE").expect("a CREATE TABLE");
    let end = start + up[start..].find("ENGINE = InnoDB").expect("its end");
    let first_statement = &up[start..end];
    connection
        .batch_execute(first_statement)
        .expect("the first table");
}

#[test]
fn a_migration_killed_halfway_is_completed_by_the_next_boot() {
    let Some(database) = ScratchMysqlDatabase::create() else {
        return;
    };
    leave_a_migration_half_done(database.url());
    let store = MysqlStorage::open(database.url()).expect("the next boot completes the migration");
    // The versions recorded are the embedded migrations' own.
    let embedded: Vec<String> = {
        use diesel::migration::MigrationSource;
        MigrationSource::<diesel::mysql::Mysql>::migrations(&MYSQL_MIGRATIONS)
            .expect("embedded")
            .iter()
            .map(|migration| migration.name().version().to_string())
            .collect()
    };
    assert_eq!(store.applied_migrations().expect("versions"), embedded);
    assert!(store
        .list_tasks(&TaskFilter::default())
        .expect("the schema is whole")
        .is_empty());
    assert!(store.list_workers().expect("workers").is_empty());
    assert!(store.list_sessions().expect("sessions").is_empty());
}
