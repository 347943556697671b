//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), as
//! client_golang's process collector names them, read from `/proc` at scrape time. Absent where `/proc` is not.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `/proc` reports CPU times and start times in USER_HZ, which Linux fixes at 100 for userspace.
const USER_HZ: f64 = 100.0;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Sample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

/// Fields of `/proc/self/stat` after the command (which may hold spaces and parentheses).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// `kB` value of a `/proc/self/status` line, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024.0)
}

impl Sample {
    /// Parse the texts of `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits` and `/proc/stat`.
    pub(super) fn parse(
        stat: &str,
        status: &str,
        limits: &str,
        system_stat: &str,
        open_fds: Option<usize>,
    ) -> Self {
        // After the command: state is field 3 of the whole line, utime 14, stime 15, starttime 22.
        let f = stat_fields(stat);
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
        let boot = system_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l["Max open files".len()..].split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok());
        Self {
            cpu_seconds: num(14).zip(num(15)).map(|(u, s)| (u + s) / USER_HZ),
            resident_bytes: status_bytes(status, "VmRSS:"),
            virtual_bytes: status_bytes(status, "VmSize:"),
            open_fds: open_fds.map(|n| n as f64),
            max_fds,
            start_time_seconds: num(22).zip(boot).map(|(t, b)| b + t / USER_HZ),
        }
    }

    fn read() -> Self {
        let text = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let fds = std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count);
        Self::parse(
            &text("/proc/self/stat"),
            &text("/proc/self/status"),
            &text("/proc/self/limits"),
            &text("/proc/stat"),
            fds,
        )
    }
}

/// Reads `/proc` on every scrape.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = Sample::read();
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            let m = enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
                g.encode(m)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_texts_parse_into_the_standard_values() {
        let stat = "4242 (pipedream (x) op) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 9 0 \
                    123400 123456789 2345 18446744073709551615";
        let status = "Name:\tpipedream\nVmSize:\t  123456 kB\nVmRSS:\t   20480 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        let system = "cpu  1 2 3\nbtime 1800000000\nprocesses 5\n";
        let s = Sample::parse(stat, status, limits, system, Some(12));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.resident_bytes, Some(20480.0 * 1024.0));
        assert_eq!(s.virtual_bytes, Some(123456.0 * 1024.0));
        assert_eq!(s.open_fds, Some(12.0));
        assert_eq!(s.max_fds, Some(1_048_576.0));
        assert_eq!(s.start_time_seconds, Some(1_800_000_000.0 + 1234.0));
        assert_eq!(Sample::parse("", "", "", "", None), Sample::default());
    }

    #[test]
    fn this_process_reads_sensibly() {
        let s = Sample::read();
        assert!(s.resident_bytes.is_some_and(|b| b > 1e5));
        assert!(s.open_fds.is_some_and(|n| n >= 3.0));
        let now = jiff::Timestamp::now().as_second() as f64;
        assert!(
            s.start_time_seconds
                .is_some_and(|t| t <= now + 1.0 && t > now - 86_400.0)
        );
    }
}
