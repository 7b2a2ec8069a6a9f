/**
 * The README's TypeScript examples compile against the library as it is:
 * each ```ts block becomes a module (its imports of 'dmthin' pointed at
 * src/index.ts, its statements wrapped in an async function) and is
 * type-checked with the project's compiler options. Docs that name a method,
 * an option or a field the API does not have fail here.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ts from 'typescript';

const ROOT = join(__dirname, '..', '..');

function snippets(): string[] {
  const md = readFileSync(join(ROOT, 'README.md'), 'utf8');
  return [...md.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
}

function asModule(code: string): string {
  const lines = code.split('\n');
  const imports = lines.filter((l) => /^import /.test(l)).map((l) => l.replace(/from 'dmthin'/, `from ${JSON.stringify(join(ROOT, 'src', 'index'))}`));
  const body = lines.filter((l) => !/^import /.test(l));
  return `${imports.join('\n')}\nexport async function example(): Promise<void> {\n${body.join('\n')}\n}\n`;
}

test('the README has TypeScript examples', () => {
  expect(snippets().length).toBeGreaterThanOrEqual(3);
});

test('every README TypeScript example type-checks against src/', () => {
  const dir = mkdtempSync(join(tmpdir(), 'dmthin-readme-'));
  try {
    const files = snippets().map((code, i) => {
      const f = join(dir, `example-${i + 1}.ts`);
      writeFileSync(f, asModule(code));
      return f;
    });
    const cfg = ts.readConfigFile(join(ROOT, 'tsconfig.json'), ts.sys.readFile);
    const parsed = ts.parseJsonConfigFileContent(cfg.config, ts.sys, ROOT);
    const program = ts.createProgram(files, {
      ...parsed.options,
      noEmit: true,
      rootDir: undefined,
      declaration: false,
      declarationMap: false,
      noUnusedLocals: false,
      typeRoots: [join(ROOT, 'node_modules', '@types')],
    });
    const problems = files.flatMap((f) =>
      ts.getPreEmitDiagnostics(program, program.getSourceFile(f)).map((d) => {
        const pos = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : undefined;
        const where = d.file ? `${d.file.fileName.replace(dir, 'README')}:${pos ? pos.line + 1 : '?'}` : '';
        return `${where} ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
      }),
    );
    expect(problems).toEqual([]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 60_000);
