use task_runtime::prelude::*;

/// No derives at all: every missing one is named, at the task; the track using the task
/// reports nothing more.
pub struct In {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Out {
    pub n: usize,
}

impl From<Out> for In {
    fn from(out: Out) -> Self {
        In {
            text: out.n.to_string(),
        }
    }
}

#[task]
pub async fn count(_ctx: &TaskContext, input: In) -> Result<Out, TaskError> {
    Ok(Out {
        n: input.text.len(),
    })
}

track! {
    pub CountTwice("count_twice") {
        Count,
        Count,
    }
}

fn main() {}
