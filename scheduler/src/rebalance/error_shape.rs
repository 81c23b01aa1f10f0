//! What a planner has learned of its own forecasts' errors: the
//! distribution of its past node-level errors, each over the spread the
//! forecast gave the node, read in place of the normal when it weighs a
//! node's risk (`predictive.rs`). Kept by the simulator and by the live
//! control plane alike, over the same number of periods.

/// Sample periods of node-level forecast errors a planner weighs its risks
/// by (each period gives one error per node with a spread).
pub const ERROR_SHAPE_PERIODS: usize = 240;

/// Errors a planner needs before it weighs its risks by them instead of by
/// the normal.
pub const ERROR_SHAPE_MIN: usize = 100;

/// The most spreads one error counts for. A forecast sure of itself (a
/// spread of a hundredth of a millicore) and wrong by a core errs by 10⁵
/// spreads; taken as it came, such an error says that any node, however
/// little its apps can vary, may overload, and the planner moves idle
/// apps off quiet nodes for nothing. Beyond this many spreads an error
/// tells of the spread, not of how far demand goes.
pub const MAX_STANDARD_ERROR: f64 = 100.0;

/// The distribution of past node-level forecast errors, each divided by the
/// standard deviation the forecast gave its node: the planner reads a
/// node's chance of overload and expected unserved CPU from it instead of
/// from the normal, so that a forecast whose errors are mostly small but
/// sometimes large (bursty functions) is weighed as it has erred.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorShape {
    /// Standardized errors, ascending.
    sorted: Vec<f64>,
    /// `above[i]`: the sum of `sorted[i..]`.
    above: Vec<f64>,
}

impl ErrorShape {
    /// From standardized errors (actual minus expected, over the forecast's
    /// standard deviation), each at most [`MAX_STANDARD_ERROR`] either way;
    /// non-finite ones are dropped.
    pub fn new(errors: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = errors
            .into_iter()
            .filter(|z| z.is_finite())
            .map(|z| z.clamp(-MAX_STANDARD_ERROR, MAX_STANDARD_ERROR))
            .collect();
        sorted.sort_by(f64::total_cmp);
        let mut above = vec![0.0; sorted.len() + 1];
        for i in (0..sorted.len()).rev() {
            above[i] = above[i + 1] + sorted[i];
        }
        ErrorShape { sorted, above }
    }

    /// Errors it holds.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether it holds no error.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// `P(Z > k)` and `E[(Z - k)⁺]` over the errors.
    pub(super) fn tail(&self, k: f64) -> (f64, f64) {
        let n = self.sorted.len();
        if n == 0 {
            return (0.0, 0.0);
        }
        let i = self.sorted.partition_point(|&z| z <= k);
        let count = (n - i) as f64;
        (count / n as f64, (self.above[i] - k * count) / n as f64)
    }
}
