//! Pure mapping between CoAP resources and MQTT topics: a device's resource topics under
//! `coap_prefix`, commands under `coap_command_prefix`, and the checks on both.

/// The placeholder of `coap_prefix` replaced by the device id.
pub const DEVICE_PLACEHOLDER: &str = "{device_id}";

/// The suffix of a command's result topic.
pub const RESULT_SUFFIX: &str = "/result";

/// Longest device id accepted.
pub const MAX_DEVICE_ID: usize = 128;

/// Checks a topic prefix from the configuration. `coap_prefix` must name the device
/// (`{device_id}`); the command prefix must not (the device id follows it).
pub fn check_prefix(prefix: &str, with_device: bool) -> Result<(), String> {
    if prefix.contains(['+', '#', '\0']) {
        return Err(format!("{prefix:?} holds a wildcard or NUL"));
    }
    if !prefix.is_empty() && !prefix.ends_with('/') {
        return Err(format!("{prefix:?} must end with '/'"));
    }
    match (with_device, prefix.matches(DEVICE_PLACEHOLDER).count()) {
        (true, 1) | (false, 0) => Ok(()),
        (true, _) => Err(format!("{prefix:?} must hold {DEVICE_PLACEHOLDER} once")),
        (false, _) => Err(format!("{prefix:?} must not hold {DEVICE_PLACEHOLDER}")),
    }
}

/// Checks a device id: one topic level, no wildcards.
pub fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the device id is empty".into());
    }
    if id.len() > MAX_DEVICE_ID {
        return Err(format!(
            "the device id is longer than {MAX_DEVICE_ID} bytes"
        ));
    }
    if id.contains(['/', '+', '#', '\0']) || id.starts_with('$') {
        return Err(format!("{id:?} is not one topic level without wildcards"));
    }
    Ok(())
}

/// Checks a resource path (CoAP Uri-Path segments): at least one segment, none with an MQTT
/// wildcard or NUL (an empty segment is an empty topic level, as in MQTT).
pub fn check_resource(segments: &[String]) -> Result<(), String> {
    if segments.is_empty() {
        return Err("the resource path is empty".into());
    }
    if let Some(bad) = segments.iter().find(|s| s.contains(['+', '#', '\0', '/'])) {
        return Err(format!("path segment {bad:?} holds a wildcard, '/' or NUL"));
    }
    Ok(())
}

/// The MQTT topic of a device's resource.
pub fn resource_topic(prefix: &str, device: &str, segments: &[String]) -> String {
    let mut topic = prefix.replace(DEVICE_PLACEHOLDER, device);
    topic.push_str(&segments.join("/"));
    topic
}

/// The filter that catches every command for `device`.
pub fn command_filter(command_prefix: &str, device: &str) -> String {
    format!("{command_prefix}{device}/#")
}

/// A command topic's device id and path segments; `None` for anything else, including the
/// result topics the gateway publishes itself.
pub fn parse_command<'a>(command_prefix: &str, topic: &'a str) -> Option<(&'a str, Vec<&'a str>)> {
    let rest = topic.strip_prefix(command_prefix)?;
    if rest.ends_with(RESULT_SUFFIX) {
        return None;
    }
    let (device, path) = rest.split_once('/')?;
    if device.is_empty() || path.is_empty() {
        return None;
    }
    Some((device, path.split('/').collect()))
}

/// The topic a command's outcome is published to.
pub fn result_topic(command_topic: &str) -> String {
    format!("{command_topic}{RESULT_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("devices/{device_id}/", true).is_ok());
        assert!(check_prefix("{device_id}/", true).is_ok());
        assert!(check_prefix("devices/", true).is_err());
        assert!(check_prefix("devices/{device_id}", true).is_err());
        assert!(check_prefix("d/{device_id}/{device_id}/", true).is_err());
        assert!(check_prefix("devices/+/", true).is_err());
        assert!(check_prefix("commands/", false).is_ok());
        assert!(check_prefix("", false).is_ok());
        assert!(check_prefix("commands/{device_id}/", false).is_err());
        assert!(check_prefix("cmd/#/", false).is_err());
    }

    #[test]
    fn device_ids_are_one_level_without_wildcards() {
        assert!(check_device_id("dev-42").is_ok());
        for bad in ["", "a/b", "a+", "#", "$sys", "a\0"] {
            assert!(check_device_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_device_id(&"x".repeat(MAX_DEVICE_ID + 1)).is_err());
    }

    #[test]
    fn resources_map_under_the_prefix() {
        assert_eq!(
            resource_topic("devices/{device_id}/", "dev1", &segs("sensor/temp")),
            "devices/dev1/sensor/temp"
        );
        assert_eq!(resource_topic("{device_id}/", "d", &segs("t")), "d/t");
        assert!(check_resource(&segs("sensor/temp")).is_ok());
        assert!(check_resource(&[]).is_err());
        assert!(check_resource(&segs("sensor/+")).is_err());
        assert!(check_resource(&["a/b".to_owned()]).is_err());
    }

    #[test]
    fn commands_parse_and_results_are_not_commands() {
        assert_eq!(
            parse_command("commands/", "commands/dev7/led"),
            Some(("dev7", vec!["led"]))
        );
        assert_eq!(
            parse_command("commands/", "commands/dev7/a/b"),
            Some(("dev7", vec!["a", "b"]))
        );
        assert_eq!(parse_command("commands/", "commands/dev7/led/result"), None);
        assert_eq!(parse_command("commands/", "commands/dev7"), None);
        assert_eq!(parse_command("commands/", "commands/dev7/"), None);
        assert_eq!(parse_command("commands/", "other/dev7/led"), None);
        assert_eq!(
            result_topic("commands/dev7/led"),
            "commands/dev7/led/result"
        );
        assert_eq!(command_filter("commands/", "dev7"), "commands/dev7/#");
    }
}
