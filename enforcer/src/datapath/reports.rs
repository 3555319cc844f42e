//! The kernel's aggregation windows (see `enforcer_common::report`): user space closes a window
//! by flipping the half the kernel counts repeats into, waits until no program can still be
//! counting into the old half, and drains it — every entry read and deleted — so each repeat is
//! reported once.
//!
//! A program that read the old half just before the flip and was held up past the wait (a
//! preempted task) only delays its count, never loses it: its entry stays in the old half and is
//! drained when that half closes again, one window later. The one race left is an increment
//! between the read and the delete of the same entry, which the wait makes practically
//! impossible.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use enforcer_common::{ReportKey, ReportRepeats, maps as names};

use super::{
    DatapathError,
    maps::{absent_ok, take},
};

/// How long a flip is given to reach every program before the old half is drained: far longer
/// than any non-sleeping program runs.
pub const FLIP_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// One drained entry: the attempt and its repeats in the window that closed.
pub type Drained = (ReportKey, ReportRepeats);

/// The aggregation map and the half the kernel counts into.
pub struct ReportWindows {
    half: Array<MapData, u32>,
    reports: HashMap<MapData, ReportKey, ReportRepeats>,
}

impl std::fmt::Debug for ReportWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportWindows").finish_non_exhaustive()
    }
}

impl ReportWindows {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Self {
            half: take(ebpf, names::REPORT_WINDOW)?,
            reports: take(ebpf, names::REPORTS)?,
        })
    }

    /// The half the kernel counts repeats into now.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn current(&self) -> Result<u8, DatapathError> {
        let half = self.half.get(&0, 0).map_err(|source| DatapathError::Map {
            map: names::REPORT_WINDOW,
            source,
        })?;
        Ok((half & 1) as u8)
    }

    /// Makes the kernel count into the other half; returns the half that closed, to be drained
    /// after [`FLIP_GRACE`].
    ///
    /// # Errors
    /// When the map cannot be read or written.
    pub fn flip(&mut self) -> Result<u8, DatapathError> {
        let closed = self.current()?;
        self.half
            .set(0, u32::from(closed ^ 1), 0)
            .map_err(|source| DatapathError::Map {
                map: names::REPORT_WINDOW,
                source,
            })?;
        Ok(closed)
    }

    /// Reads and deletes every entry of `half`. Entries without repeats (an attempt that was
    /// reported on its own) are deleted without being returned.
    ///
    /// # Errors
    /// When the map cannot be iterated, read or written; what was drained before the error is
    /// lost to this call but not to the kernel's count (the entries not deleted stay for the next
    /// drain).
    pub fn drain(&mut self, half: u8) -> Result<Vec<Drained>, DatapathError> {
        let map_error = |source| DatapathError::Map {
            map: names::REPORTS,
            source,
        };
        let keys = self
            .reports
            .keys()
            .filter(|key| key.as_ref().map_or(true, |key| key.half == half))
            .collect::<Result<Vec<ReportKey>, _>>()
            .map_err(map_error)?;
        let mut drained = Vec::new();
        for key in keys {
            let repeats = match self.reports.get(&key, 0) {
                Ok(repeats) => repeats,
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(source) => return Err(map_error(source)),
            };
            absent_ok(self.reports.remove(&key), names::REPORTS)?;
            if repeats.count > 0 {
                drained.push((key, repeats));
            }
        }
        Ok(drained)
    }
}
