//! Real servers for Rookery's tests, never mocks: Redis (and Redis Sentinel) and PostgreSQL.
//!
//! - [`RedisServer::shared`] and [`PostgresServer::shared`]: one server for the whole test
//!   process. Nextest runs each test in a process of its own, so the nextest setup script
//!   (`scripts/test-servers`, configured in `.config/nextest.toml`) starts one of each for the
//!   whole run and exports [`REDIS_URL_ENV`] and [`POSTGRES_URL_ENV`]; when those are set the
//!   shared servers are those, otherwise each process starts its own on first use.
//! - Isolation between tests on a shared server: [`RedisServer::prefix`] (a key prefix or
//!   cluster name nobody else uses) and [`PostgresServer::database`] (a fresh database).
//! - [`RedisServer::start_private`] and [`PostgresServer::start_private`]: a server of one
//!   test's own, which it may `stop()` and `start()` again on the same port and data directory
//!   (fault tests). [`RedisServer::start_replica_of`] and [`RedisSentinel`] for failover tests.
//!
//! Servers listen on free loopback ports and live in temporary directories. A private server
//! is stopped when dropped; and every server started here has a watchdog (a small bash loop)
//! that stops it and removes its directory once the test process is gone, however it ended:
//! statics are never dropped, and a test killed by a timeout runs no destructor.
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and `postgres` run as the `postgres`
//! user (the Debian package creates it) in a directory chowned to it.

// A test helper: failing loudly, with the reason, is what it is for.
#![allow(clippy::expect_used)]

mod postgres;
mod process;
mod redis;

pub use postgres::{POSTGRES_URL_ENV, PostgresServer, postgres_bin_dir, with_database};
pub use redis::{REDIS_URL_ENV, RedisSentinel, RedisServer};
