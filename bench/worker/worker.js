// The Cloudflare Worker template worker-helicone-scores, for bench/e2e.py: the same behaviour
// (written for this bench, in plain ES module syntax), with the API base and key as bindings.
//
// Like the template: any POST is a webhook; the signature is not checked; the score post is
// awaited before the answer (no ctx.waitUntil), and the answer is 200 with the post's outcome,
// even when the post failed. A body that is not OpenAI-shaped throws, so the answer is 500.
// Left out: the template's console.log of every choice's content.

export default {
  async fetch(request, env, ctx) {
    if (request.method !== "POST") {
      return new Response("Method Not Allowed", { status: 405 });
    }
    const data = await request.json();
    const scores = calculateScore(data);
    const url = `${env.HELICONE_API_BASE}/v1/request/${data.request_id}/score`;
    const result = await postScore(url, scores, env);
    return new Response(JSON.stringify(result), {
      headers: { "Content-Type": "application/json" },
      status: 200,
    });
  },
};

async function postScore(url, scores, env) {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: {
        Authorization: `Bearer ${env.HELICONE_API_KEY}`,
        "Content-Type": "application/json",
      },
      body: JSON.stringify({ scores }),
    });
    return {
      status: "Success",
      responseStatusCode: response.status,
      responseBody: await response.json(),
    };
  } catch (e) {
    return { status: "Error", message: e.message };
  }
}

function calculateScore(data) {
  if (data.response_body) {
    return { vocabulary_diversity: vocabularyDiversity(data.response_body) };
  }
  return {};
}

// Unique words: every choice's content lower-cased and split on /\s+/, into one set. Total
// words: the sum of each content's split(" ") length. Math.round of the ratio, in percent.
function vocabularyDiversity(body) {
  const unique = new Set();
  let total = 0;
  for (const choice of body.choices) {
    const content = choice.message && choice.message.content;
    if (content) {
      for (const word of content.toLowerCase().split(/\s+/)) unique.add(word);
      total += content.split(" ").length;
    }
  }
  return total === 0 ? 0 : Math.round((unique.size / total) * 100);
}
