//! Test harness: starts real `rookery-broker` processes on free loopback ports and stops them.
