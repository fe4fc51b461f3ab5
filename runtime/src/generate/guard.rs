//! Checks on the scores the driver chooses from, so that no logits a model
//! returns and no combination of settings makes it index past what is left:
//!
//! - the model's logits must be finite (NaN or ±inf come from a broken or
//!   overflowing export), unless `remove_invalid_values` replaces them;
//! - after the processors, no score may be NaN or +inf (a processor
//!   overflowed: a temperature so low the logits pass f32's range, say);
//! - a row whose every score is −inf has nothing to choose: the setting
//!   whose processor removed the last token is named.
//!
//! The scan is one pass over a row; finding the setting to blame replays the
//! pipeline on a copy, only on the way to an error.

use super::GenerateError;
use super::processors::Pipeline;

/// What one pass over a row of scores found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// A NaN or +inf score.
    pub invalid: bool,
    /// Some score above −inf.
    pub live: bool,
}

pub(crate) fn scan(scores: &[f32]) -> Scan {
    let mut s = Scan::default();
    for &x in scores {
        s.live |= x > f32::NEG_INFINITY;
        // NaN or +inf: neither finite nor the -inf a processor masks with.
        s.invalid |= x.is_nan() || x == f32::INFINITY;
    }
    s
}

/// Refuses a row of model logits holding NaN or ±inf (unless `remove_invalid_values` is set).
pub(crate) fn check_logits(
    logits: &[f32],
    remove_invalid_values: bool,
    row: usize,
    step: usize,
) -> Result<(), GenerateError> {
    if remove_invalid_values {
        return Ok(());
    }
    match logits.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(token) => Err(GenerateError::InvalidLogits { row, step, token, value: logits[token] }),
    }
}

/// The error for a row whose processed scores are invalid or all −inf: replays `pipeline` over
/// `logits` (the row's scores before the processors) to name the processor's setting.
pub(crate) fn blame(
    pipeline: &Pipeline,
    tokens: &[u32],
    logits: &[f32],
    earlier_groups: &[u32],
    step: usize,
) -> GenerateError {
    let mut scores = logits.to_vec();
    for p in &pipeline.processors {
        p.apply(tokens, &mut scores, earlier_groups);
        let s = scan(&scores);
        if s.invalid {
            return GenerateError::Config {
                field: p.setting().into(),
                message: format!(
                    "made a token's score NaN or infinite at generation step {step} (the scores overflow f32); use a less extreme value"
                ),
            };
        }
        if !s.live {
            return GenerateError::Config {
                field: p.setting().into(),
                message: format!(
                    "leaves no token to choose at generation step {step}: every token is suppressed or filtered out"
                ),
            };
        }
    }
    // Unreachable with a deterministic pipeline; said plainly rather than assumed.
    GenerateError::Config {
        field: "logits_processor".into(),
        message: format!("the processed scores at generation step {step} leave no token to choose"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_tells_nan_infinities_and_all_masked_apart() {
        let n = f32::NEG_INFINITY;
        assert_eq!(scan(&[1.0, n]), Scan { invalid: false, live: true });
        assert_eq!(scan(&[n, n]), Scan { invalid: false, live: false });
        assert_eq!(scan(&[]), Scan { invalid: false, live: false });
        assert!(scan(&[1.0, f32::NAN]).invalid);
        assert!(scan(&[f32::INFINITY, n]).invalid);
        assert!(check_logits(&[1.0, f32::NAN], false, 0, 0).is_err());
        assert!(check_logits(&[1.0, f32::NAN], true, 0, 0).is_ok());
        assert!(check_logits(&[n], false, 0, 0).is_err());
    }
}
