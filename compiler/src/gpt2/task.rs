//! Export tasks, with optimum's names, and the task a checkpoint's `architectures` implies.

/// What the exported graph computes (`--task`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Task {
    /// `GPT2LMHeadModel` without a cache: `logits` for every position.
    TextGeneration,
    /// `GPT2LMHeadModel` with past key/values (the default): prompt and decode steps in one graph.
    #[default]
    TextGenerationWithPast,
    /// `GPT2Model`: `last_hidden_state` (the final LayerNorm's output).
    FeatureExtraction,
    /// `GPT2Model` with past key/values.
    FeatureExtractionWithPast,
    /// `GPT2ForSequenceClassification`: `logits` [batch, num_labels] at each row's last non-pad token.
    TextClassification,
    /// `GPT2ForTokenClassification`: `logits` [batch, sequence, num_labels].
    TokenClassification,
    /// `GPT2ForQuestionAnswering`: `start_logits`, `end_logits` [batch, sequence].
    QuestionAnswering,
    /// `GPT2DoubleHeadsModel`: inputs [batch, num_choices, sequence] and `mc_token_ids`; `logits` and `mc_logits`.
    MultipleChoice,
}

/// Head class → task, as optimum maps a checkpoint's `architectures`.
const ARCHITECTURES: [(&str, Task); 6] = [
    ("GPT2LMHeadModel", Task::TextGenerationWithPast),
    ("GPT2Model", Task::FeatureExtraction),
    ("GPT2ForSequenceClassification", Task::TextClassification),
    ("GPT2ForTokenClassification", Task::TokenClassification),
    ("GPT2ForQuestionAnswering", Task::QuestionAnswering),
    ("GPT2DoubleHeadsModel", Task::MultipleChoice),
];

crate::named::named_enum!(Task, "task", {
    TextGeneration => "text-generation",
    TextGenerationWithPast => "text-generation-with-past",
    FeatureExtraction => "feature-extraction",
    FeatureExtractionWithPast => "feature-extraction-with-past",
    TextClassification => "text-classification",
    TokenClassification => "token-classification",
    QuestionAnswering => "question-answering",
    MultipleChoice => "multiple-choice",
});

impl Task {
    /// Whether the graph takes and returns the key/value cache.
    pub fn with_past(self) -> bool {
        matches!(self, Task::TextGenerationWithPast | Task::FeatureExtractionWithPast)
    }

    /// Whether the graph takes `position_ids` (generation and the cached tasks; the others number
    /// positions 0.. as transformers does when none are given).
    pub fn takes_position_ids(self) -> bool {
        matches!(self, Task::TextGeneration | Task::TextGenerationWithPast | Task::FeatureExtractionWithPast)
    }

    /// Whether the graph cross-attends to encoder states (config `add_cross_attention`): the language
    /// model and the base model take them, as in transformers; the other heads do not.
    pub fn cross_attends(self, c: &crate::checkpoint::Gpt2Config) -> bool {
        c.add_cross_attention
            && matches!(
                self,
                Task::TextGeneration
                    | Task::TextGenerationWithPast
                    | Task::FeatureExtraction
                    | Task::FeatureExtractionWithPast
            )
    }

    /// The task `architectures` (config.json) implies: its first GPT-2 head class; a config without
    /// `architectures` is a language model, as transformers' GPT-2 checkpoints are.
    pub fn from_architectures(architectures: &[String]) -> Result<Task, String> {
        if architectures.is_empty() {
            return Ok(Task::TextGenerationWithPast);
        }
        architectures
            .iter()
            .find_map(|a| ARCHITECTURES.iter().find(|(name, _)| name == a).map(|&(_, t)| t))
            .ok_or_else(|| {
                let known: Vec<&str> = ARCHITECTURES.iter().map(|(n, _)| *n).collect();
                format!(
                    "config.json: field `architectures`: {architectures:?} names no GPT-2 head gpt2c knows ({}); pass --task",
                    known.join(", ")
                )
            })
    }

    /// A one-line description for the model's doc string.
    pub fn describe(self) -> &'static str {
        match self {
            Task::TextGeneration => "GPT-2 causal language model (text-generation)",
            Task::TextGenerationWithPast => {
                "GPT-2 causal language model with past key/values (text-generation-with-past)"
            }
            Task::FeatureExtraction => "GPT-2 hidden states (feature-extraction)",
            Task::FeatureExtractionWithPast => {
                "GPT-2 hidden states with past key/values (feature-extraction-with-past)"
            }
            Task::TextClassification => "GPT-2 sequence classification (text-classification)",
            Task::TokenClassification => "GPT-2 token classification (token-classification)",
            Task::QuestionAnswering => "GPT-2 extractive question answering (question-answering)",
            Task::MultipleChoice => "GPT-2 double heads: language model and multiple choice (multiple-choice)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_imply_optimum_tasks() {
        let of = |a: &[&str]| Task::from_architectures(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(of(&[]).unwrap(), Task::TextGenerationWithPast);
        assert_eq!(of(&["GPT2LMHeadModel"]).unwrap(), Task::TextGenerationWithPast);
        assert_eq!(of(&["GPT2Model"]).unwrap(), Task::FeatureExtraction);
        assert_eq!(of(&["GPT2ForSequenceClassification"]).unwrap(), Task::TextClassification);
        assert_eq!(of(&["GPT2DoubleHeadsModel"]).unwrap(), Task::MultipleChoice);
        let err = of(&["BertModel"]).unwrap_err();
        assert!(err.contains("architectures") && err.contains("--task"), "{err}");
    }
}
