// Renders /openapi.json as a list of operations: method, path, access, parameters, body and
// replies. Text is set with textContent only.
"use strict";

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// "#/components/schemas/Name" → "Name"; inline schemas by their type.
function schemaName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return schemaName(schema.items) + "[]";
  if (Array.isArray(schema.type)) return schema.type.join(" | ");
  return schema.type || (schema.oneOf ? "one of" : "object");
}

function contentLine(content) {
  return Object.entries(content || {})
    .map(([type, media]) => type + (media.schema ? " " + schemaName(media.schema) : ""))
    .join(", ");
}

function access(op) {
  if (!op.security) return "public";
  return op.security
    .map((req) => Object.keys(req)[0] || "none")
    .map((name) => name === "none" ? "no credentials" : name)
    .join(" or ");
}

function render(doc) {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.getElementById("description").textContent = doc.info.description || "";
  const root = document.getElementById("operations");
  root.replaceChildren();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of ["get", "put", "post", "delete", "patch"]) {
      const op = item[method];
      if (!op) continue;
      const card = el("section", undefined, "card");
      const head = el("h2");
      head.append(el("code", method.toUpperCase() + " " + path));
      card.append(head);
      if (op.description || op.summary) card.append(el("p", op.description || op.summary));
      card.append(el("p", "Access: " + access(op)));
      const list = el("ul");
      for (const p of op.parameters || []) {
        list.append(el("li", p.in + " " + p.name + (p.required ? " (required)" : "") + ": " +
          schemaName(p.schema) + (p.description ? " — " + p.description : "")));
      }
      if (op.requestBody) list.append(el("li", "body: " + contentLine(op.requestBody.content)));
      for (const [status, reply] of Object.entries(op.responses || {})) {
        list.append(el("li", status + " " + (reply.description || "") + " " + contentLine(reply.content)));
      }
      card.append(list);
      root.append(card);
    }
  }
  const schemas = el("section", undefined, "card");
  schemas.append(el("h2", "Schemas"));
  const pre = el("pre");
  pre.textContent = JSON.stringify((doc.components || {}).schemas || {}, null, 2);
  schemas.append(pre);
  root.append(schemas);
}

fetch("/openapi.json")
  .then((reply) => reply.json())
  .then(render)
  .catch((error) => {
    document.getElementById("operations").textContent = "Could not load /openapi.json: " + error;
  });
