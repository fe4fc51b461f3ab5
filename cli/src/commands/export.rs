//! `gpt2c export`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use gpt2c_compiler::gpt2::{DEFAULT_OPSET, FloatType, GraphOptions, KvCache, Part, Precision, Quantize, Target, Task};
use gpt2c_compiler::layout::Layout;
use gpt2c_compiler::onnx::ExternalData;
use gpt2c_compiler::{ExportOptions, Progress, export};
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

    /// What the graph computes, with optimum's task names. Default: what config.json's
    /// `architectures` implies (GPT2LMHeadModel → text-generation-with-past, GPT2Model →
    /// feature-extraction, GPT2ForSequenceClassification → text-classification,
    /// GPT2ForTokenClassification → token-classification, GPT2ForQuestionAnswering →
    /// question-answering, GPT2DoubleHeadsModel → multiple-choice; none → text-generation-with-past).
    #[arg(long, value_parser = choice::<Task>())]
    pub task: Option<Task>,

    /// Folder layout: `optimum` (model.onnx at the top, for optimum, ONNX Runtime and gpt2c),
    /// `genai` (also genai_config.json for onnxruntime-genai's decoder model type, with search
    /// defaults from generation_config.json) or `transformers.js` (onnx/model.onnx,
    /// onnx/model_fp16.onnx, onnx/model_quantized.onnx for int8, … where @huggingface/transformers
    /// looks).
    #[arg(long, value_parser = choice::<Layout>(), default_value_t = Layout::Optimum)]
    pub layout: Layout,

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
        };
        let opset = self.opset.unwrap_or(DEFAULT_OPSET.max(precision.min_opset()));
        let options = ExportOptions {
            graph: GraphOptions { opset, precision, task: self.task },
            external_data: self.external_data,
            force: self.force,
            random_init: self.random_init.then_some(self.seed),
            layout: self.layout,
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
    let summary = result?;
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
