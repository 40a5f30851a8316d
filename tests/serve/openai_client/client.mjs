// The official OpenAI client library against an OpenAI-compatible server: one plain and one
// streamed completion of a token-id prompt, greedy. Prints what each returned as JSON.
//   node client.mjs BASE_URL MODEL PROMPT_IDS MAX_TOKENS     (PROMPT_IDS: "3,14,15")
import OpenAI from "openai";

const [baseURL, model, promptText, maxTokensText] = process.argv.slice(2);
const prompt = promptText.split(",").map(Number);
const maxTokens = Number(maxTokensText);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 60000 });

const plain = await client.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0 });
const streamed = { token_ids: [], text: "", finish_reason: null, chunks: 0 };
const stream = await client.completions.create({
  model, prompt, max_tokens: maxTokens, temperature: 0, stream: true,
});
for await (const chunk of stream) {
  streamed.chunks += 1;
  for (const choice of chunk.choices) {
    streamed.token_ids.push(...(choice.token_ids ?? []));
    streamed.text += choice.text;
    if (choice.finish_reason) streamed.finish_reason = choice.finish_reason;
  }
}
let error = null;
try {
  await client.completions.create({ model, prompt: [], max_tokens: 1 });
} catch (e) {
  error = { status: e.status, param: e.param ?? e.error?.param ?? null };
}
console.log(JSON.stringify({
  plain: {
    token_ids: plain.choices[0].token_ids,
    finish_reason: plain.choices[0].finish_reason,
    usage: plain.usage,
  },
  stream: streamed,
  error,
}));
