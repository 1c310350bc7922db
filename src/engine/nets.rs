//! Built-in networks with random weights, written so that a trace keeps the batch dimension
//! dynamic: every reshape leaves the batch as -1. (`tch::vision`'s ResNet, Inception and DINOv2
//! read the batch size in Rust — `flat_view`, `size3()` — which a trace freezes into the graph,
//! so a module traced at batch 1 would refuse batch 8.) MobileNet-v2 from `tch::vision` has no
//! such read and is used as is.

use tch::nn;
use tch::{Kind, Tensor};

/// conv (no bias) + batch norm + ReLU.
fn cbr(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: [i64; 2],
    pad: [i64; 2],
    stride: i64,
) -> nn::SequentialT {
    let cfg = nn::ConvConfigND::<[i64; 2]> {
        stride: [stride, stride],
        padding: pad,
        bias: false,
        ..Default::default()
    };
    nn::seq_t()
        .add(nn::conv(&p / "conv", c_in, c_out, k, cfg))
        .add(nn::batch_norm2d(
            &p / "bn",
            c_out,
            nn::BatchNormConfig {
                eps: 1e-3,
                ..Default::default()
            },
        ))
        .add_fn(|x| x.relu())
}

fn sq(k: i64) -> [i64; 2] {
    [k, k]
}

fn head(p: &nn::Path, c: i64, classes: i64) -> impl Fn(&Tensor) -> Tensor {
    let fc = nn::linear(p / "fc", c, classes, Default::default());
    move |x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&fc)
}

fn conv_bn(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, pad: i64) -> nn::SequentialT {
    let cfg = nn::ConvConfig {
        stride,
        padding: pad,
        bias: false,
        ..Default::default()
    };
    nn::seq_t()
        .add(nn::conv2d(&p / "conv", c_in, c_out, k, cfg))
        .add(nn::batch_norm2d(&p / "bn", c_out, Default::default()))
}

/// ResNet: `bottleneck` picks Bottleneck (ResNet-50) over Basic (ResNet-18/34) blocks.
pub fn resnet(
    p: &nn::Path,
    layers: [usize; 4],
    bottleneck: bool,
    classes: i64,
) -> impl Fn(&Tensor) -> Tensor {
    let expansion = if bottleneck { 4 } else { 1 };
    let stem = conv_bn(p / "stem", 3, 64, 7, 2, 3);
    let mut blocks: Vec<(nn::SequentialT, Option<nn::SequentialT>)> = Vec::new();
    let mut c_in = 64;
    for (stage, &n) in layers.iter().enumerate() {
        let width = 64 << stage;
        for i in 0..n {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let q = p / format!("layer{}", stage + 1) / i;
            let c_out = width * expansion;
            let body = if bottleneck {
                nn::seq_t()
                    .add(conv_bn(&q / "c1", c_in, width, 1, 1, 0))
                    .add_fn(|x| x.relu())
                    .add(conv_bn(&q / "c2", width, width, 3, stride, 1))
                    .add_fn(|x| x.relu())
                    .add(conv_bn(&q / "c3", width, c_out, 1, 1, 0))
            } else {
                nn::seq_t()
                    .add(conv_bn(&q / "c1", c_in, width, 3, stride, 1))
                    .add_fn(|x| x.relu())
                    .add(conv_bn(&q / "c2", width, c_out, 3, 1, 1))
            };
            let down = (stride != 1 || c_in != c_out)
                .then(|| conv_bn(&q / "down", c_in, c_out, 1, stride, 0));
            blocks.push((body, down));
            c_in = c_out;
        }
    }
    let head = head(p, c_in, classes);
    move |x| {
        let mut h =
            x.apply_t(&stem, false)
                .relu()
                .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for (body, down) in &blocks {
            let skip = match down {
                Some(d) => h.apply_t(d, false),
                None => h.shallow_clone(),
            };
            h = (h.apply_t(body, false) + skip).relu();
        }
        head(&h)
    }
}

type Block = Box<dyn Fn(&Tensor) -> Tensor + Send>;

fn run(x: &Tensor, seq: &[&nn::SequentialT]) -> Tensor {
    seq.iter()
        .fold(x.shallow_clone(), |h, m| h.apply_t(*m, false))
}

fn avg3(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None::<i64>)
}

fn max3s2(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

fn inception_a(p: nn::Path, c: i64, pool: i64) -> Block {
    let b1 = cbr(&p / "b1", c, 64, sq(1), sq(0), 1);
    let b5 = [
        cbr(&p / "b5_1", c, 48, sq(1), sq(0), 1),
        cbr(&p / "b5_2", 48, 64, sq(5), sq(2), 1),
    ];
    let b3 = [
        cbr(&p / "b3_1", c, 64, sq(1), sq(0), 1),
        cbr(&p / "b3_2", 64, 96, sq(3), sq(1), 1),
        cbr(&p / "b3_3", 96, 96, sq(3), sq(1), 1),
    ];
    let bp = cbr(&p / "bp", c, pool, sq(1), sq(0), 1);
    Box::new(move |x| {
        Tensor::cat(
            &[
                run(x, &[&b1]),
                run(x, &[&b5[0], &b5[1]]),
                run(x, &[&b3[0], &b3[1], &b3[2]]),
                run(&avg3(x), &[&bp]),
            ],
            1,
        )
    })
}

fn inception_b(p: nn::Path, c: i64) -> Block {
    let b3 = cbr(&p / "b3", c, 384, sq(3), sq(0), 2);
    let bd = [
        cbr(&p / "bd_1", c, 64, sq(1), sq(0), 1),
        cbr(&p / "bd_2", 64, 96, sq(3), sq(1), 1),
        cbr(&p / "bd_3", 96, 96, sq(3), sq(0), 2),
    ];
    Box::new(move |x| {
        Tensor::cat(
            &[run(x, &[&b3]), run(x, &[&bd[0], &bd[1], &bd[2]]), max3s2(x)],
            1,
        )
    })
}

fn inception_c(p: nn::Path, c: i64, c7: i64) -> Block {
    let (r, col) = ([1, 7], [7, 1]);
    let (pr, pc) = ([0, 3], [3, 0]);
    let b1 = cbr(&p / "b1", c, 192, sq(1), sq(0), 1);
    let b7 = [
        cbr(&p / "b7_1", c, c7, sq(1), sq(0), 1),
        cbr(&p / "b7_2", c7, c7, r, pr, 1),
        cbr(&p / "b7_3", c7, 192, col, pc, 1),
    ];
    let bd = [
        cbr(&p / "bd_1", c, c7, sq(1), sq(0), 1),
        cbr(&p / "bd_2", c7, c7, col, pc, 1),
        cbr(&p / "bd_3", c7, c7, r, pr, 1),
        cbr(&p / "bd_4", c7, c7, col, pc, 1),
        cbr(&p / "bd_5", c7, 192, r, pr, 1),
    ];
    let bp = cbr(&p / "bp", c, 192, sq(1), sq(0), 1);
    Box::new(move |x| {
        Tensor::cat(
            &[
                run(x, &[&b1]),
                run(x, &[&b7[0], &b7[1], &b7[2]]),
                run(x, &[&bd[0], &bd[1], &bd[2], &bd[3], &bd[4]]),
                run(&avg3(x), &[&bp]),
            ],
            1,
        )
    })
}

fn inception_d(p: nn::Path, c: i64) -> Block {
    let b3 = [
        cbr(&p / "b3_1", c, 192, sq(1), sq(0), 1),
        cbr(&p / "b3_2", 192, 320, sq(3), sq(0), 2),
    ];
    let b7 = [
        cbr(&p / "b7_1", c, 192, sq(1), sq(0), 1),
        cbr(&p / "b7_2", 192, 192, [1, 7], [0, 3], 1),
        cbr(&p / "b7_3", 192, 192, [7, 1], [3, 0], 1),
        cbr(&p / "b7_4", 192, 192, sq(3), sq(0), 2),
    ];
    Box::new(move |x| {
        Tensor::cat(
            &[
                run(x, &[&b3[0], &b3[1]]),
                run(x, &[&b7[0], &b7[1], &b7[2], &b7[3]]),
                max3s2(x),
            ],
            1,
        )
    })
}

fn inception_e(p: nn::Path, c: i64) -> Block {
    let b1 = cbr(&p / "b1", c, 320, sq(1), sq(0), 1);
    let b3 = cbr(&p / "b3_1", c, 384, sq(1), sq(0), 1);
    let b3a = cbr(&p / "b3_2a", 384, 384, [1, 3], [0, 1], 1);
    let b3b = cbr(&p / "b3_2b", 384, 384, [3, 1], [1, 0], 1);
    let bd = [
        cbr(&p / "bd_1", c, 448, sq(1), sq(0), 1),
        cbr(&p / "bd_2", 448, 384, sq(3), sq(1), 1),
    ];
    let bda = cbr(&p / "bd_3a", 384, 384, [1, 3], [0, 1], 1);
    let bdb = cbr(&p / "bd_3b", 384, 384, [3, 1], [1, 0], 1);
    let bp = cbr(&p / "bp", c, 192, sq(1), sq(0), 1);
    Box::new(move |x| {
        let h3 = run(x, &[&b3]);
        let hd = run(x, &[&bd[0], &bd[1]]);
        Tensor::cat(
            &[
                run(x, &[&b1]),
                run(&h3, &[&b3a]),
                run(&h3, &[&b3b]),
                run(&hd, &[&bda]),
                run(&hd, &[&bdb]),
                run(&avg3(x), &[&bp]),
            ],
            1,
        )
    })
}

/// Inception-v3 (299×299 inputs), the layout of torchvision's.
pub fn inception_v3(p: &nn::Path, classes: i64) -> impl Fn(&Tensor) -> Tensor {
    let stem = [
        cbr(p / "s1", 3, 32, sq(3), sq(0), 2),
        cbr(p / "s2", 32, 32, sq(3), sq(0), 1),
        cbr(p / "s3", 32, 64, sq(3), sq(1), 1),
    ];
    let stem2 = [
        cbr(p / "s4", 64, 80, sq(1), sq(0), 1),
        cbr(p / "s5", 80, 192, sq(3), sq(0), 1),
    ];
    let blocks: Vec<Block> = vec![
        inception_a(p / "5b", 192, 32),
        inception_a(p / "5c", 256, 64),
        inception_a(p / "5d", 288, 64),
        inception_b(p / "6a", 288),
        inception_c(p / "6b", 768, 128),
        inception_c(p / "6c", 768, 160),
        inception_c(p / "6d", 768, 160),
        inception_c(p / "6e", 768, 192),
        inception_d(p / "7a", 768),
        inception_e(p / "7b", 1280),
        inception_e(p / "7c", 2048),
    ];
    let head = head(p, 2048, classes);
    move |x| {
        let h = max3s2(&run(x, &[&stem[0], &stem[1], &stem[2]]));
        let h = max3s2(&run(&h, &[&stem2[0], &stem2[1]]));
        head(&blocks.iter().fold(h, |h, b| b(&h)))
    }
}

/// A small CNN for tests and demos: two conv + ReLU layers, a pool, a 10-way head.
pub fn tiny_cnn(p: &nn::Path) -> impl Fn(&Tensor) -> Tensor {
    let conv = |name: &str, c_in, c_out| {
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        nn::conv2d(p / name, c_in, c_out, 3, cfg)
    };
    let (c1, c2) = (conv("c1", 3, 16), conv("c2", 16, 32));
    let fc = nn::linear(p / "fc", 32, 10, Default::default());
    move |x| {
        let h = x.apply(&c1).relu().max_pool2d_default(2).apply(&c2).relu();
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&fc)
    }
}

/// A two-input model: `tanh(la(a) + lb(b))` for a `[B, 16]` and b `[B, 8]`.
pub fn two_heads(p: &nn::Path) -> impl Fn(&Tensor, &Tensor) -> Tensor {
    let la = nn::linear(p / "la", 16, 4, Default::default());
    let lb = nn::linear(p / "lb", 8, 4, Default::default());
    move |a, b| (a.apply(&la) + b.apply(&lb)).tanh()
}

/// A BERT-base-sized encoder (12 layers, hidden 768, 12 heads, FFN 3072) over token ids
/// `[B, S]`; returns the pooled first-token embedding `[B, 768]`.
pub fn bert_base(p: &nn::Path, seq: i64) -> impl Fn(&Tensor) -> Tensor {
    const H: i64 = 768;
    const HEADS: i64 = 12;
    const D: i64 = H / HEADS;
    let tok = nn::embedding(p / "tok", 30522, H, Default::default());
    let pos = p.randn("pos", &[seq, H], 0.0, 0.02);
    let ln0 = nn::layer_norm(p / "ln0", vec![H], Default::default());
    let layers: Vec<_> = (0..12)
        .map(|i| {
            let q = p / "layer" / i;
            (
                nn::linear(&q / "qkv", H, 3 * H, Default::default()),
                nn::linear(&q / "out", H, H, Default::default()),
                nn::layer_norm(&q / "ln1", vec![H], Default::default()),
                nn::linear(&q / "ff1", H, 4 * H, Default::default()),
                nn::linear(&q / "ff2", 4 * H, H, Default::default()),
                nn::layer_norm(&q / "ln2", vec![H], Default::default()),
            )
        })
        .collect();
    let pool = nn::linear(p / "pool", H, H, Default::default());
    move |ids| {
        let mut x = (ids.apply(&tok) + &pos).apply(&ln0);
        for (qkv, out, ln1, ff1, ff2, ln2) in &layers {
            let t = x
                .apply(qkv)
                .view([-1, seq, 3, HEADS, D])
                .permute([2, 0, 3, 1, 4]);
            let (q, k, v) = (t.get(0), t.get(1), t.get(2));
            let att = (q.matmul(&k.transpose(-2, -1)) / (D as f64).sqrt()).softmax(-1, Kind::Float);
            let ctx = att.matmul(&v).transpose(1, 2).reshape([-1, seq, H]);
            x = (&x + ctx.apply(out)).apply(ln1);
            let ff = x.apply(ff1).gelu("tanh").apply(ff2);
            x = (&x + ff).apply(ln2);
        }
        x.select(1, 0).apply(&pool).tanh()
    }
}
