//! `GenerationConfig`: transformers' generation parameters under their names
//! and with their defaults (4.57), read from `generation_config.json` and
//! overridden by the caller, then validated before any compute.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::GenerateError;
use super::limits::{MAX_COUNT, MAX_DRAFT_TOKENS, MAX_LIST_IDS, MAX_STOP_STRING_BYTES, MAX_STOP_STRINGS};

/// `eos_token_id` / `forced_eos_token_id`: one id or several.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(t) => vec![*t],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// `stop_strings`: one string or several.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StopStrings {
    One(String),
    Many(Vec<String>),
}

/// `early_stopping`: `true`, `false` or `"never"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    True,
    #[default]
    False,
    Never,
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(true) => Ok(EarlyStopping::True),
            Value::Bool(false) => Ok(EarlyStopping::False),
            Value::String(s) if s == "never" => Ok(EarlyStopping::Never),
            Value::String(s) if s == "true" => Ok(EarlyStopping::True),
            Value::String(s) if s == "false" => Ok(EarlyStopping::False),
            other => Err(serde::de::Error::custom(format!("expected true, false or \"never\", found {other}"))),
        }
    }
}

/// Generation parameters (transformers' `GenerationConfig` fields gpt2c implements).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    pub max_length: usize,
    pub max_new_tokens: Option<usize>,
    pub min_length: usize,
    pub min_new_tokens: Option<usize>,
    pub early_stopping: EarlyStopping,
    pub max_time: Option<f64>,
    pub stop_strings: Option<StopStrings>,
    pub do_sample: bool,
    pub num_beams: usize,
    pub num_beam_groups: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: Option<f32>,
    pub typical_p: f32,
    pub epsilon_cutoff: f32,
    pub eta_cutoff: f32,
    pub diversity_penalty: f32,
    pub repetition_penalty: f32,
    pub length_penalty: f32,
    pub no_repeat_ngram_size: usize,
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    pub renormalize_logits: bool,
    pub forced_bos_token_id: Option<u32>,
    pub forced_eos_token_id: Option<TokenIds>,
    pub remove_invalid_values: bool,
    pub exponential_decay_length_penalty: Option<(usize, f32)>,
    pub suppress_tokens: Option<Vec<u32>>,
    pub begin_suppress_tokens: Option<Vec<u32>>,
    pub sequence_bias: Option<Vec<(Vec<u32>, f32)>>,
    pub num_return_sequences: usize,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIds>,
    /// Prompt lookup decoding: drafted tokens per verification pass (greedy search only).
    pub prompt_lookup_num_tokens: Option<usize>,
    /// Prompt lookup decoding: the longest n-gram matched against earlier tokens (default 2).
    pub max_matching_ngram_size: Option<usize>,
    /// Assisted generation: tokens the assistant drafts per pass (default 20).
    pub num_assistant_tokens: Option<usize>,
    /// Assisted generation: `constant`, or `heuristic` / `heuristic_transient` (+2 after a pass that
    /// kept every draft, −1 otherwise; both reset for each call here).
    pub num_assistant_tokens_schedule: Option<String>,
    /// Assisted generation: the assistant stops drafting after a token below this probability (default 0.4).
    pub assistant_confidence_threshold: Option<f32>,
    /// Not a transformers field: the seed of gpt2c's sampler (a fresh one when unset).
    pub seed: Option<u64>,
    /// Set when the caller (not the file) chose `max_length`: transformers then
    /// leaves it alone instead of reading the default 20 as "20 new tokens".
    #[serde(skip)]
    pub max_length_from_caller: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_length: 20,
            max_new_tokens: None,
            min_length: 0,
            min_new_tokens: None,
            early_stopping: EarlyStopping::False,
            max_time: None,
            stop_strings: None,
            do_sample: false,
            num_beams: 1,
            num_beam_groups: 1,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            min_p: None,
            typical_p: 1.0,
            epsilon_cutoff: 0.0,
            eta_cutoff: 0.0,
            diversity_penalty: 0.0,
            repetition_penalty: 1.0,
            length_penalty: 1.0,
            no_repeat_ngram_size: 0,
            bad_words_ids: None,
            renormalize_logits: false,
            forced_bos_token_id: None,
            forced_eos_token_id: None,
            remove_invalid_values: false,
            exponential_decay_length_penalty: None,
            suppress_tokens: None,
            begin_suppress_tokens: None,
            sequence_bias: None,
            num_return_sequences: 1,
            pad_token_id: None,
            bos_token_id: None,
            eos_token_id: None,
            prompt_lookup_num_tokens: None,
            max_matching_ngram_size: None,
            num_assistant_tokens: None,
            num_assistant_tokens_schedule: None,
            assistant_confidence_threshold: None,
            seed: None,
            max_length_from_caller: false,
        }
    }
}

/// The decoding algorithm a configuration selects (transformers' `GenerationMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Greedy,
    Sample,
    BeamSearch,
    BeamSample,
    GroupBeamSearch,
}

/// Strictly positive and finite (NaN is not).
fn positive(x: f64) -> bool {
    x > 0.0 && x.is_finite()
}

fn invalid(field: &str, message: impl Into<String>) -> GenerateError {
    GenerateError::Config { field: field.into(), message: message.into() }
}

impl GenerationConfig {
    /// The settings' names as transformers spells them (every field read from JSON).
    pub const FIELDS: &'static [&'static str] = &[
        "max_length",
        "max_new_tokens",
        "min_length",
        "min_new_tokens",
        "early_stopping",
        "max_time",
        "stop_strings",
        "do_sample",
        "num_beams",
        "num_beam_groups",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "typical_p",
        "epsilon_cutoff",
        "eta_cutoff",
        "diversity_penalty",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "bad_words_ids",
        "renormalize_logits",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "remove_invalid_values",
        "exponential_decay_length_penalty",
        "suppress_tokens",
        "begin_suppress_tokens",
        "sequence_bias",
        "num_return_sequences",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "prompt_lookup_num_tokens",
        "max_matching_ngram_size",
        "num_assistant_tokens",
        "num_assistant_tokens_schedule",
        "assistant_confidence_threshold",
        "seed",
    ];

    /// Reads `defaults` (generation_config.json) with `overrides` on top; `null` means "default".
    pub fn from_json(defaults: &Map<String, Value>, overrides: &Map<String, Value>) -> Result<Self, GenerateError> {
        let mut merged = defaults.clone();
        for (k, v) in overrides {
            merged.insert(k.clone(), v.clone());
        }
        merged.retain(|_, v| !v.is_null());
        let mut config = GenerationConfig::deserialize(Value::Object(merged.clone())).map_err(|e| {
            // Name the offending field: try each one alone.
            let field = merged
                .iter()
                .find(|(k, v)| {
                    GenerationConfig::deserialize(Value::Object(Map::from_iter([((*k).clone(), (*v).clone())])))
                        .is_err()
                })
                .map_or_else(|| "?".to_string(), |(k, _)| k.clone());
            invalid(&field, e.to_string())
        })?;
        config.max_length_from_caller = overrides.get("max_length").is_some_and(|v| !v.is_null());
        Ok(config)
    }

    /// Speculative decoding settings (prompt lookup, assistant): counts and the schedule in range,
    /// and prompt lookup on greedy search only (the driver verifies drafts against greedy choices).
    fn validate_prompt_lookup(&self) -> Result<(), GenerateError> {
        for (field, value) in [
            ("prompt_lookup_num_tokens", self.prompt_lookup_num_tokens),
            ("max_matching_ngram_size", self.max_matching_ngram_size),
            ("num_assistant_tokens", self.num_assistant_tokens),
        ] {
            if let Some(v) = value.filter(|v| !(1..=MAX_DRAFT_TOKENS).contains(v)) {
                return Err(invalid(field, format!("({v}) must be between 1 and {MAX_DRAFT_TOKENS}")));
            }
        }
        if let Some(s) = self
            .num_assistant_tokens_schedule
            .as_deref()
            .filter(|s| !["constant", "heuristic", "heuristic_transient"].contains(s))
        {
            return Err(invalid(
                "num_assistant_tokens_schedule",
                format!("`{s}`: expected constant, heuristic or heuristic_transient"),
            ));
        }
        if let Some(t) = self.assistant_confidence_threshold.filter(|t| !(0.0..=1.0).contains(t)) {
            return Err(invalid("assistant_confidence_threshold", format!("({t}) must be in [0, 1]")));
        }
        if self.prompt_lookup_num_tokens.is_some() && self.mode() != Mode::Greedy {
            return Err(invalid(
                "prompt_lookup_num_tokens",
                "prompt lookup decoding runs with greedy search only (do_sample false, num_beams 1)",
            ));
        }
        Ok(())
    }

    /// The EOS ids (empty when none).
    pub fn eos(&self) -> Vec<u32> {
        self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()
    }

    pub fn mode(&self) -> Mode {
        match (self.num_beams > 1, self.num_beam_groups > 1, self.do_sample) {
            (false, _, false) => Mode::Greedy,
            (false, _, true) => Mode::Sample,
            (true, true, _) => Mode::GroupBeamSearch,
            (true, false, true) => Mode::BeamSample,
            (true, false, false) => Mode::BeamSearch,
        }
    }

    /// Checks every setting before any compute, naming the field: what transformers would reject,
    /// and every number outside its documented range (see [`limits`](super::limits)): counts at most
    /// 2^32 − 1, floats finite, id lists at most 2^20 ids, each id inside the vocabulary.
    pub fn validate(&self, vocab_size: usize) -> Result<(), GenerateError> {
        for (field, value) in [
            ("max_length", Some(self.max_length)),
            ("max_new_tokens", self.max_new_tokens),
            ("min_length", Some(self.min_length)),
            ("min_new_tokens", self.min_new_tokens),
            ("top_k", Some(self.top_k)),
            ("no_repeat_ngram_size", Some(self.no_repeat_ngram_size)),
            ("num_beams", Some(self.num_beams)),
            ("num_beam_groups", Some(self.num_beam_groups)),
            ("num_return_sequences", Some(self.num_return_sequences)),
            ("exponential_decay_length_penalty", self.exponential_decay_length_penalty.map(|(start, _)| start)),
        ] {
            if value.is_some_and(|v| v > MAX_COUNT) {
                return Err(invalid(field, format!("({}) must be at most {MAX_COUNT}", value.unwrap_or_default())));
            }
        }
        let floats = [
            ("temperature", f64::from(self.temperature)),
            ("top_p", f64::from(self.top_p)),
            ("min_p", self.min_p.map_or(0.0, f64::from)),
            ("typical_p", f64::from(self.typical_p)),
            ("epsilon_cutoff", f64::from(self.epsilon_cutoff)),
            ("eta_cutoff", f64::from(self.eta_cutoff)),
            ("diversity_penalty", f64::from(self.diversity_penalty)),
            ("repetition_penalty", f64::from(self.repetition_penalty)),
            ("length_penalty", f64::from(self.length_penalty)),
            ("max_time", self.max_time.unwrap_or(1.0)),
            (
                "exponential_decay_length_penalty",
                self.exponential_decay_length_penalty.map_or(1.0, |(_, f)| f64::from(f)),
            ),
        ];
        if let Some((field, v)) = floats.iter().find(|(_, v)| !v.is_finite()) {
            return Err(invalid(field, format!("({v}) must be a finite number")));
        }
        if let Some((ids, bias)) = self.sequence_bias.iter().flatten().find(|(_, b)| !b.is_finite()) {
            return Err(invalid("sequence_bias", format!("the bias of {ids:?} ({bias}) must be a finite number")));
        }
        if self.max_new_tokens == Some(0) {
            return Err(invalid("max_new_tokens", "must be at least 1"));
        }
        self.validate_prompt_lookup()?;
        if self.max_length == 0 {
            return Err(invalid("max_length", "must be at least 1"));
        }
        if self.num_beams == 0 {
            return Err(invalid("num_beams", "must be at least 1"));
        }
        if self.num_beam_groups == 0 {
            return Err(invalid("num_beam_groups", "must be at least 1"));
        }
        if self.num_return_sequences == 0 {
            return Err(invalid("num_return_sequences", "must be at least 1"));
        }
        if self.num_beam_groups > 1 {
            if !self.num_beams.is_multiple_of(self.num_beam_groups) {
                return Err(invalid(
                    "num_beam_groups",
                    format!(
                        "num_beams ({}) must be divisible by num_beam_groups ({})",
                        self.num_beams, self.num_beam_groups
                    ),
                ));
            }
            if self.do_sample {
                return Err(invalid("num_beam_groups", "diverse (group) beam search cannot be used with do_sample"));
            }
            if self.diversity_penalty <= 0.0 {
                return Err(invalid(
                    "diversity_penalty",
                    "must be greater than 0 with num_beam_groups > 1, otherwise the groups are identical",
                ));
            }
        }
        if self.num_beams > 1 && self.num_return_sequences > self.num_beams {
            return Err(invalid(
                "num_return_sequences",
                format!("({}) cannot exceed num_beams ({})", self.num_return_sequences, self.num_beams),
            ));
        }
        if self.num_beams == 1 && !self.do_sample && self.num_return_sequences > 1 {
            return Err(invalid(
                "num_return_sequences",
                "greedy decoding returns one sequence per prompt: use num_beams or do_sample for more",
            ));
        }
        if self.do_sample && !positive(f64::from(self.temperature)) {
            return Err(invalid(
                "temperature",
                format!(
                    "({}) must be strictly positive when sampling; for greedy decoding set do_sample=false",
                    self.temperature
                ),
            ));
        }
        if self.temperature < 0.0 {
            return Err(invalid("temperature", format!("({}) must not be negative", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid("top_p", format!("({}) must be in (0, 1]", self.top_p)));
        }
        if let Some(p) = self.min_p.filter(|p| !(0.0..=1.0).contains(p)) {
            return Err(invalid("min_p", format!("({p}) must be in [0, 1]")));
        }
        if !(self.typical_p > 0.0 && self.typical_p <= 1.0) {
            return Err(invalid("typical_p", format!("({}) must be in (0, 1]", self.typical_p)));
        }
        for (field, v) in [("epsilon_cutoff", self.epsilon_cutoff), ("eta_cutoff", self.eta_cutoff)] {
            if !(0.0..1.0).contains(&v) {
                return Err(invalid(field, format!("({v}) must be in [0, 1)")));
            }
        }
        if self.diversity_penalty < 0.0 {
            return Err(invalid("diversity_penalty", format!("({}) must not be negative", self.diversity_penalty)));
        }
        if !positive(f64::from(self.repetition_penalty)) {
            return Err(invalid(
                "repetition_penalty",
                format!("({}) must be strictly positive", self.repetition_penalty),
            ));
        }
        if let Some(t) = self.max_time.filter(|&t| !positive(t)) {
            return Err(invalid("max_time", format!("({t}) must be a positive number of seconds")));
        }
        if self.exponential_decay_length_penalty.is_some_and(|(_, factor)| !positive(f64::from(factor))) {
            return Err(invalid("exponential_decay_length_penalty", "the decay factor must be positive"));
        }
        self.validate_ids(vocab_size)?;
        let stops = self.stop_strings();
        if self.stop_strings.is_some() && stops.iter().any(String::is_empty) {
            return Err(invalid("stop_strings", "stop strings must not be empty"));
        }
        if stops.len() > MAX_STOP_STRINGS {
            return Err(invalid("stop_strings", format!("{} strings given; at most {MAX_STOP_STRINGS}", stops.len())));
        }
        if let Some(s) = stops.iter().find(|s| s.len() > MAX_STOP_STRING_BYTES) {
            return Err(invalid(
                "stop_strings",
                format!("a stop string of {} bytes; each may hold at most {MAX_STOP_STRING_BYTES}", s.len()),
            ));
        }
        Ok(())
    }

    /// Every token id setting: ids inside the vocabulary, lists of at most [`MAX_LIST_IDS`] ids.
    fn validate_ids(&self, vocab_size: usize) -> Result<(), GenerateError> {
        let check_ids = |field: &str, ids: &[u32]| -> Result<(), GenerateError> {
            if ids.len() > MAX_LIST_IDS {
                return Err(invalid(field, format!("{} token ids given; at most {MAX_LIST_IDS}", ids.len())));
            }
            match ids.iter().find(|&&t| t as usize >= vocab_size) {
                Some(t) => Err(invalid(field, format!("token id {t} is outside the vocabulary (size {vocab_size})"))),
                None => Ok(()),
            }
        };
        check_ids("eos_token_id", &self.eos())?;
        for (field, id) in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("forced_bos_token_id", self.forced_bos_token_id),
        ] {
            check_ids(field, id.as_slice())?;
        }
        if let Some(f) = &self.forced_eos_token_id {
            check_ids("forced_eos_token_id", &f.to_vec())?;
        }
        for (field, ids) in
            [("suppress_tokens", &self.suppress_tokens), ("begin_suppress_tokens", &self.begin_suppress_tokens)]
        {
            check_ids(field, ids.as_deref().unwrap_or_default())?;
        }
        if let Some(words) = &self.bad_words_ids {
            if words.is_empty() || words.iter().any(Vec::is_empty) {
                return Err(invalid("bad_words_ids", "must be a non-empty list of non-empty token id lists"));
            }
            check_ids("bad_words_ids", &words.concat())?;
        }
        if let Some(bias) = &self.sequence_bias {
            if bias.is_empty() || bias.iter().any(|(ids, _)| ids.is_empty()) {
                return Err(invalid("sequence_bias", "must be a non-empty list of [token ids, bias] pairs"));
            }
            let all: Vec<u32> = bias.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
            check_ids("sequence_bias", &all)?;
        }
        Ok(())
    }

    pub fn stop_strings(&self) -> Vec<String> {
        match &self.stop_strings {
            None => Vec::new(),
            Some(StopStrings::One(s)) => vec![s.clone()],
            Some(StopStrings::Many(v)) => v.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(defaults: &str, overrides: &str) -> Result<GenerationConfig, GenerateError> {
        let d: Map<String, Value> = serde_json::from_str(defaults).unwrap();
        let o: Map<String, Value> = serde_json::from_str(overrides).unwrap();
        GenerationConfig::from_json(&d, &o)
    }

    #[test]
    fn defaults_are_transformers_defaults() {
        let c = parse("{}", "{}").unwrap();
        assert_eq!((c.max_length, c.top_k, c.top_p, c.temperature, c.num_beams), (20, 50, 1.0, 1.0, 1));
        assert_eq!(c.early_stopping, EarlyStopping::False);
        assert_eq!(c.mode(), Mode::Greedy);
        assert!(!c.max_length_from_caller);
    }

    #[test]
    fn overrides_win_and_null_means_default() {
        let c = parse(
            r#"{"eos_token_id": 7, "top_k": 10, "max_length": 50}"#,
            r#"{"top_k": null, "eos_token_id": [3, 4]}"#,
        )
        .unwrap();
        assert_eq!((c.top_k, c.max_length, c.eos()), (50, 50, vec![3, 4]));
        assert!(!c.max_length_from_caller);
        assert!(parse("{}", r#"{"max_length": 30}"#).unwrap().max_length_from_caller);
        let c = parse(
            "{}",
            r#"{"early_stopping": "never", "num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0}"#,
        )
        .unwrap();
        assert_eq!((c.early_stopping, c.mode()), (EarlyStopping::Never, Mode::GroupBeamSearch));
    }

    #[test]
    fn every_listed_field_is_read() {
        // serde ignores names that are not fields: a value of the wrong type fails only for real ones.
        for field in GenerationConfig::FIELDS {
            let err = parse("{}", &format!(r#"{{"{field}": {{"x": 1}}}}"#)).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
        assert!(parse("{}", r#"{"not_a_field": {"x": 1}}"#).is_ok());
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            (r#"{"top_p": 0.0}"#, "top_p"),
            (r#"{"top_p": 1.5}"#, "top_p"),
            (r#"{"do_sample": true, "temperature": 0.0}"#, "temperature"),
            (r#"{"num_beams": 2, "num_return_sequences": 3}"#, "num_return_sequences"),
            (r#"{"num_beams": 3, "num_beam_groups": 2, "diversity_penalty": 1.0}"#, "num_beam_groups"),
            (r#"{"num_beams": 4, "num_beam_groups": 2}"#, "diversity_penalty"),
            (r#"{"max_new_tokens": 0}"#, "max_new_tokens"),
            (r#"{"eos_token_id": 5000}"#, "eos_token_id"),
            (r#"{"repetition_penalty": -1.0}"#, "repetition_penalty"),
            (r#"{"num_return_sequences": 2}"#, "num_return_sequences"),
            (r#"{"prompt_lookup_num_tokens": 0}"#, "prompt_lookup_num_tokens"),
            (r#"{"prompt_lookup_num_tokens": 257}"#, "prompt_lookup_num_tokens"),
            (r#"{"max_matching_ngram_size": 0}"#, "max_matching_ngram_size"),
            (r#"{"prompt_lookup_num_tokens": 4, "do_sample": true}"#, "prompt_lookup_num_tokens"),
            (r#"{"prompt_lookup_num_tokens": 4, "num_beams": 2}"#, "prompt_lookup_num_tokens"),
            (r#"{"num_assistant_tokens": 0}"#, "num_assistant_tokens"),
            (r#"{"num_assistant_tokens_schedule": "sometimes"}"#, "num_assistant_tokens_schedule"),
            (r#"{"assistant_confidence_threshold": 1.5}"#, "assistant_confidence_threshold"),
        ];
        for (overrides, field) in cases {
            let err = parse("{}", overrides).and_then(|c| c.validate(1000).map(|_| c)).unwrap_err();
            assert!(err.to_string().contains(&format!("`{field}`")), "{overrides}: {err}");
        }
        let err = parse("{}", r#"{"top_k": "many"}"#).unwrap_err().to_string();
        assert!(err.contains("`top_k`"), "{err}");
        let err = parse("{}", r#"{"early_stopping": "sometimes"}"#).unwrap_err().to_string();
        assert!(err.contains("`early_stopping`") && err.contains("never"), "{err}");
    }
}
