//! The test kit starts real servers, keeps tests apart on them, and stops and restarts
//! private ones.

use rookery_testkit::{PostgresServer, RedisSentinel, RedisServer};

#[test]
fn shared_redis_answers_and_prefixes_differ() {
    let redis = RedisServer::shared();
    assert_eq!(redis.command(&["PING"]), "PONG");
    let (a, b) = (RedisServer::prefix(), RedisServer::prefix());
    assert_ne!(a, b);
    redis.command(&["SET", &format!("{a}:k"), "1"]);
    assert_eq!(redis.command(&["GET", &format!("{a}:k")]), "1");
    assert_eq!(redis.command(&["GET", &format!("{b}:k")]), "");
}

#[test]
fn private_redis_stops_and_starts_on_the_same_port_keeping_data() {
    let redis = RedisServer::start_private();
    let port = redis.port();
    redis.command(&["SET", "kept", "yes"]);
    redis.stop();
    assert!(!redis.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    redis.start();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.command(&["GET", "kept"]), "yes");
}

#[test]
fn sentinel_fails_over_to_the_replica() {
    let master = RedisServer::start_private();
    let replica = RedisServer::start_replica_of(&master);
    master.command(&["SET", "k", "v"]);
    let sentinel = RedisSentinel::start(&master, "rookery");
    assert_eq!(sentinel.master_port(), Some(master.port()));
    assert_eq!(sentinel.failover(), replica.port());
    assert_eq!(replica.command(&["GET", "k"]), "v");
    replica.command(&["SET", "k", "w"]);
}

#[test]
fn shared_postgres_gives_each_test_a_database() {
    let postgres = PostgresServer::shared();
    let a = postgres.database();
    let b = postgres.database();
    assert_ne!(a, b);
    PostgresServer::psql(&a, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    assert_eq!(PostgresServer::psql(&a, "SELECT count(*) FROM t"), "1");
    assert_eq!(
        PostgresServer::psql(&b, "SELECT count(*) FROM pg_tables WHERE tablename = 't'"),
        "0"
    );
}

#[test]
fn private_postgres_stops_and_starts_keeping_data() {
    let postgres = PostgresServer::start_private();
    let db = postgres.database();
    PostgresServer::psql(&db, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)");
    postgres.stop();
    assert!(!postgres.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", postgres.port())).is_err());
    postgres.start();
    assert_eq!(PostgresServer::psql(&db, "SELECT x FROM t"), "7");
}
