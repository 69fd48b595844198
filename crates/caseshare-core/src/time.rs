//! Time as the domain sees it: microseconds since the Unix epoch, with
//! conversions to and from `google.protobuf.Timestamp`. The current time is
//! always an argument, never read here.

use prost_types::Timestamp;

/// Microseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Micros(pub i64);

impl Micros {
    /// One second.
    pub const SECOND: i64 = 1_000_000;

    /// From a protobuf timestamp (saturating; nanos truncated).
    pub fn from_timestamp(ts: &Timestamp) -> Self {
        Micros(
            ts.seconds
                .saturating_mul(Self::SECOND)
                .saturating_add(i64::from(ts.nanos) / 1_000),
        )
    }

    /// To a protobuf timestamp.
    pub fn to_timestamp(self) -> Timestamp {
        Timestamp {
            seconds: self.0.div_euclid(Self::SECOND),
            nanos: i32::try_from(self.0.rem_euclid(Self::SECOND) * 1_000).unwrap_or(0),
        }
    }

    /// This time plus a number of seconds.
    pub fn plus_seconds(self, s: i64) -> Self {
        Micros(self.0.saturating_add(s.saturating_mul(Self::SECOND)))
    }
}

/// True if a timestamp is within protobuf's valid range (years 1–9999) and
/// its nanos are in 0..1e9.
pub fn timestamp_is_valid(ts: &Timestamp) -> bool {
    const MIN: i64 = -62_135_596_800;
    const MAX: i64 = 253_402_300_799;
    (MIN..=MAX).contains(&ts.seconds) && (0..1_000_000_000).contains(&ts.nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for us in [0, 1, -1, 1_700_000_000_123_456, -62_135_596_800_000_000] {
            let m = Micros(us);
            assert_eq!(Micros::from_timestamp(&m.to_timestamp()), m);
        }
    }
}
