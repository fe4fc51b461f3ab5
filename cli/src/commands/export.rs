//! `gpt2c export`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use gpt2c_compiler::gpt2::search::{Generation, SearchOverrides};
use gpt2c_compiler::gpt2::{
    DEFAULT_OPSET, FloatType, GraphOptions, Int4Activations, KvCache, Part, Precision, Quantize, Target, Task,
};
use gpt2c_compiler::layout::Layout;
use gpt2c_compiler::onnx::ExternalData;
use gpt2c_compiler::{ExportOptions, ExportSummary, Progress, export};
use indicatif::{ProgressBar, ProgressStyle};

use crate::choice::choice;

/// Compile a Hugging Face GPT-2 checkpoint into an ONNX export folder.
///
/// The folder gets model.onnx (by default optimum's text-generation-with-past interface: input_ids,
/// attention_mask, position_ids and past_key_values.{i}.key/.value in; logits and
/// present.{i}.key/.value out; a past length of 0 is valid, so one graph serves prefill and
/// decode; see --task for the other heads), config.json, generation_config.json and the tokenizer
/// files. ONNX Runtime, optimum's ORTModelForCausalLM and `gpt2c generate` load it as is.
///
/// The export is written to a temporary folder and renamed into place when complete: a failed
/// export leaves nothing behind.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  gpt2c export models/tiny-default -o out/tiny\n  \
                         gpt2c export --config gpt2-xl.json --random-init --seed 0 -o out/xl-random")]
pub struct ExportArgs {
    /// Checkpoint folder: config.json, model.safetensors (or model.safetensors.index.json with its
    /// shards, or an older pytorch_model.bin, read without running its pickle) and tokenizer files,
    /// as saved by transformers' save_pretrained. Or a Hugging Face Hub model id
    /// (`openai-community/gpt2`), downloaded into the Hub cache (HF_HOME) from HF_ENDPOINT with
    /// HF_TOKEN; cached files are not fetched again, HF_HUB_OFFLINE=1 uses the cache only. Not
    /// needed with --config.
    pub model: Option<PathBuf>,

    /// Branch, tag or commit of a Hub model id.
    #[arg(long, default_value = "main")]
    pub revision: String,

    /// A config.json to build from with --random-init, instead of a checkpoint folder.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Ignore any weights: initialise them as transformers initialises a fresh model of the config
    /// (normal(0, initializer_range), residual projections scaled by 1/sqrt(2·n_layer), biases 0,
    /// LayerNorm 1/0), from --seed. For testing deployment pipelines and benchmarking shapes.
    #[arg(long)]
    pub random_init: bool,

    /// Seed of --random-init.
    #[arg(long, default_value_t = 0, requires = "random_init")]
    pub seed: u64,

    /// Output folder. Must not exist, or be empty (see --force).
    #[arg(short, long)]
    pub output: PathBuf,

    /// ONNX opset of the default domain (14 to 23; default 18, or 21 when int4 needs blocked
    /// DequantizeLinear). Before 17, LayerNormalization is written as its primitive ops.
    #[arg(long)]
    pub opset: Option<i64>,

    /// Float type of weights and matmuls. fp16 keeps LayerNorm, the attention mask and softmax and
    /// the residual stream in fp32, so GPT-2's large mask constant and activations cannot overflow.
    #[arg(long, value_parser = choice::<FloatType>(), default_value_t = FloatType::Fp32)]
    pub dtype: FloatType,

    /// Float type of the graph's inputs and outputs (past/present key-values, logits); fp16 needs
    /// --dtype fp16.
    #[arg(long, value_parser = choice::<FloatType>(), default_value_t = FloatType::Fp32)]
    pub io_dtype: FloatType,

    /// Weight quantization. int8: int8 weights per output channel, activations quantized at run
    /// time (DynamicQuantizeLinear → MatMulInteger; ONNX Runtime's fast integer kernels). int8-weights:
    /// int8 weights dequantized before a float MatMul (for runtimes without integer matmul). int4:
    /// 4-bit blocks of 32 (MatMulNBits with --target ort, blocked DequantizeLinear otherwise). The
    /// token embedding is stored as int8 rows and, tied, serves the LM head too.
    #[arg(long, value_parser = choice::<Quantize>(), default_value_t = Quantize::None)]
    pub quantize: Quantize,

    /// Parts left unquantized, comma-separated: attn, mlp, lm_head, embedding.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(Part))]
    pub quantize_skip: Vec<Part>,

    /// What --quantize int4 --target ort multiplies the 4-bit weights with. int8 (default): the
    /// activations quantized to int8 per block of 32 at run time and integer dot products
    /// (MatMulNBits accuracy_level 4, ONNX Runtime's fastest CPU kernels; several times faster on x86
    /// and ARM). float: fp32 activations times the dequantized weights (exactly the dequantized
    /// model; slower).
    #[arg(long, value_parser = choice::<Int4Activations>())]
    pub int4_activations: Option<Int4Activations>,

    /// What the graph computes, with optimum's task names. Default: what config.json's
    /// `architectures` implies (GPT2LMHeadModel → text-generation-with-past, GPT2Model →
    /// feature-extraction, GPT2ForSequenceClassification → text-classification,
    /// GPT2ForTokenClassification → token-classification, GPT2ForQuestionAnswering →
    /// question-answering, GPT2DoubleHeadsModel → multiple-choice; none → text-generation-with-past).
    #[arg(long, value_parser = choice::<Task>())]
    pub task: Option<Task>,

    /// Folder layout: `optimum` (model.onnx at the top, for optimum, ONNX Runtime and gpt2c),
    /// `genai` (also genai_config.json for onnxruntime-genai's decoder model type, with search
    /// defaults from generation_config.json), `transformers.js` (onnx/model.onnx,
    /// onnx/model_fp16.onnx, onnx/model_quantized.onnx for int8, … where @huggingface/transformers
    /// looks) or `triton` (a Triton model repository: NAME/config.pbtxt and NAME/1/model.onnx; with
    /// --generation the search settings become constants of the graph, which then takes input_ids
    /// and attention_mask alone; without it the stateless text-generation task, as Triton keeps no
    /// cache between requests).
    #[arg(long, value_parser = choice::<Layout>(), default_value_t = Layout::Optimum)]
    pub layout: Layout,

    /// The Triton model's name (--layout triton). Default: the checkpoint folder's name.
    #[arg(long, value_name = "NAME")]
    pub triton_model_name: Option<String>,

    /// Triton's max_batch_size (--layout triton): requests its dynamic batcher stacks at most.
    #[arg(long, value_name = "N")]
    pub triton_max_batch_size: Option<u32>,

    /// Generation inside the graph: one node of ONNX Runtime's com.microsoft GreedySearch,
    /// BeamSearch or Sampling with the decoder as its subgraph, so `session.run` returns whole
    /// sequences (int32 `sequences`, and `sequences_scores` for beam search) from int32
    /// `input_ids`/`attention_mask` and the operator's scalar inputs (`max_length`, `min_length`,
    /// `repetition_penalty`; `num_beams`, `num_return_sequences`, `length_penalty` for beams; `seed`
    /// for sampling). Fixed at export, from generation_config.json unless given below: EOS and pad
    /// ids, --no-repeat-ngram-size, --early-stopping (beam), --temperature and --top-p
    /// (sampling). Settings the operator cannot honour are refused: top-k sampling (transformers'
    /// default top_k 50 included: pass --top-k 0), several EOS ids, typical-p and the like. ONNX
    /// Runtime only (fp32).
    #[arg(long, value_parser = choice::<Generation>(), help_heading = "In-graph generation")]
    pub generation: Option<Generation>,

    /// Sampling's temperature (an attribute of the node).
    #[arg(long, help_heading = "In-graph generation")]
    pub temperature: Option<f32>,
    /// Sampling's nucleus (top-p) mass (an attribute of the node).
    #[arg(long, help_heading = "In-graph generation")]
    pub top_p: Option<f32>,
    /// 0 to sample without top-k (the Sampling operator has no top-k filter).
    #[arg(long, help_heading = "In-graph generation")]
    pub top_k: Option<u64>,
    /// Banned repeated n-gram size (an attribute of the node).
    #[arg(long, help_heading = "In-graph generation")]
    pub no_repeat_ngram_size: Option<u64>,
    /// Beam search stops each prompt when num_beams hypotheses are done (an attribute).
    #[arg(long, help_heading = "In-graph generation")]
    pub early_stopping: Option<bool>,
    /// With --layout triton: new tokens per request (a constant of the graph: max_length = the
    /// prompt's length + this, at most n_positions).
    #[arg(long, help_heading = "In-graph generation")]
    pub max_new_tokens: Option<u64>,
    /// With --layout triton: the total length (prompt included), when --max-new-tokens is not given.
    #[arg(long, help_heading = "In-graph generation")]
    pub max_length: Option<u64>,
    /// With --layout triton: the shortest total length before EOS may end a sequence.
    #[arg(long, help_heading = "In-graph generation")]
    pub min_length: Option<u64>,
    /// With --layout triton: beams (beam-search).
    #[arg(long, help_heading = "In-graph generation")]
    pub num_beams: Option<u64>,
    /// With --layout triton: sequences returned per prompt (beam-search).
    #[arg(long, help_heading = "In-graph generation")]
    pub num_return_sequences: Option<u64>,
    /// With --layout triton: beam scores are divided by length^this (beam-search).
    #[arg(long, help_heading = "In-graph generation")]
    pub length_penalty: Option<f32>,
    /// With --layout triton: the repetition penalty.
    #[arg(long, help_heading = "In-graph generation")]
    pub repetition_penalty: Option<f32>,
    /// With --layout triton: the sampling seed (sampling).
    #[arg(long = "sampling-seed", value_name = "SEED", help_heading = "In-graph generation")]
    pub sampling_seed: Option<u64>,

    /// Runtime the graph is shaped for: `portable` (standard ONNX operators, runs everywhere,
    /// tract included) or `ort` (may use ONNX Runtime's com.microsoft operators).
    #[arg(long, value_parser = choice::<Target>(), default_value_t = Target::Portable)]
    pub target: Target,

    /// How the graph keeps the key/value cache: `concat` (present = past + new keys, any runtime)
    /// or `shared` (with `--target ort`: ONNX Runtime's GroupQueryAttention appends the new keys
    /// and values into the past buffer when the caller binds one buffer as both past and present,
    /// as onnxruntime-genai's past_present_share_buffer and `gpt2c generate`/`serve` do). Same
    /// inputs and outputs; each row's length is its attention mask's last set position, so left and
    /// right padding both work and rows of one batch may differ in length. ONNX Runtime only.
    #[arg(long, value_parser = choice::<KvCache>(), default_value_t = KvCache::Concat)]
    pub kv_cache: KvCache,

    /// Where the weights go: `auto` writes one model.onnx_data file beside model.onnx only when
    /// the model would pass protobuf's 2 GiB limit; `always` and `never` force the choice.
    #[arg(long, value_parser = choice::<ExternalData>(), default_value_t = ExternalData::Auto)]
    pub external_data: ExternalData,

    /// Replace the output folder if it exists and is not empty.
    #[arg(long)]
    pub force: bool,

    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

impl ExportArgs {
    /// Validates the arguments into export options before any work starts.
    fn plan(&self) -> anyhow::Result<ExportOptions> {
        let precision = Precision {
            dtype: self.dtype,
            io_dtype: self.io_dtype,
            quantize: self.quantize,
            skip: self.quantize_skip.clone(),
            target: self.target,
            kv_cache: self.kv_cache,
            int4_activations: self.int4_activations,
        };
        let opset = self.opset.unwrap_or(DEFAULT_OPSET.max(precision.min_opset()));
        let search = SearchOverrides {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            early_stopping: self.early_stopping,
            max_new_tokens: self.max_new_tokens,
            max_length: self.max_length,
            min_length: self.min_length,
            num_beams: self.num_beams,
            num_return_sequences: self.num_return_sequences,
            length_penalty: self.length_penalty,
            repetition_penalty: self.repetition_penalty,
            seed: self.sampling_seed,
        };
        if self.generation.is_none() && search != SearchOverrides::default() {
            anyhow::bail!("the in-graph generation options (--temperature, --num-beams, …) need --generation");
        }
        let inputs = SearchOverrides {
            temperature: None,
            top_p: None,
            top_k: None,
            no_repeat_ngram_size: None,
            early_stopping: None,
            ..search.clone()
        };
        if self.layout != Layout::Triton && inputs != SearchOverrides::default() {
            anyhow::bail!(
                "--max-new-tokens, --max-length, --min-length, --num-beams, --num-return-sequences, --length-penalty, \
                 --repetition-penalty and --sampling-seed become constants of a Triton repository's graph \
                 (--layout triton); otherwise they are inputs of the graph, given per call"
            );
        }
        if self.layout != Layout::Triton && (self.triton_model_name.is_some() || self.triton_max_batch_size.is_some()) {
            anyhow::bail!("--triton-model-name and --triton-max-batch-size need --layout triton");
        }
        let options = ExportOptions {
            graph: GraphOptions { opset, precision, task: self.task, ..Default::default() },
            external_data: self.external_data,
            force: self.force,
            random_init: self.random_init.then_some(self.seed),
            layout: self.layout,
            generation: self.generation,
            search,
            triton_name: self.triton_model_name.clone(),
            triton_max_batch_size: self.triton_max_batch_size,
        };
        options.validate()?;
        Ok(options)
    }

    /// The checkpoint folder, or the config --random-init builds from.
    fn source(&self) -> anyhow::Result<&std::path::Path> {
        match (&self.model, &self.config, self.random_init) {
            (Some(_), Some(_), _) => anyhow::bail!("give either a checkpoint folder or --config, not both"),
            (None, Some(_), false) => anyhow::bail!("--config builds a model from a config alone: add --random-init"),
            (Some(m), None, _) | (None, Some(m), true) => Ok(m),
            (None, None, _) => anyhow::bail!("give a checkpoint folder (or --config FILE --random-init)"),
        }
    }
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let summary = execute(&args)?;
    for w in &summary.warnings {
        crate::output::warning(w);
    }
    if !args.quiet {
        writeln!(
            crate::output::stdout(),
            "exported {} parameters ({} layers, {}) to {} in {:.2} s: {} in {} files ({}){}",
            human_count(summary.parameters),
            summary.n_layer,
            summary.task.name(),
            summary.out_dir.display(),
            summary.seconds,
            human_bytes(summary.total_bytes),
            summary.files.len(),
            summary.files.join(", "),
            if summary.external_data { ", weights in external data" } else { "" },
        )?;
    }
    Ok(())
}

/// Checks the arguments, fetches a Hub id, and exports, with a progress bar on stderr unless
/// `--quiet`; the summary's warnings are the caller's to show.
pub fn execute(args: &ExportArgs) -> anyhow::Result<ExportSummary> {
    let options = args.plan()?;
    args.source()?;
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    let mut on_progress = |p: Progress| match p {
        Progress::Step(step) => bar.set_message(step),
        Progress::WriteStart(total) => {
            bar.set_length(total);
            bar.set_position(0);
            bar.set_style(
                ProgressStyle::with_template("writing model.onnx [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
        }
        Progress::Wrote(n) => bar.inc(n),
        Progress::WriteDone => bar.set_style(ProgressStyle::default_spinner()),
    };
    // Library errors already name the file or field at fault: print them as they are.
    let source = args.source()?;
    let fetched;
    let source = match source.to_str().filter(|s| !args.random_init && gpt2c_compiler::hub::looks_like_repo_id(s)) {
        Some(id) => {
            bar.set_message(format!("fetching {id} from the Hub"));
            fetched = gpt2c_compiler::hub::fetch(id, Some(&args.revision), !args.quiet)?;
            fetched.as_path()
        }
        None => source,
    };
    let result = export(source, &args.output, &options, &mut on_progress);
    bar.finish_and_clear();
    Ok(result?)
}

fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
