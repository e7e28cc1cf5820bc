"""The Space's CSS (gradio 6 takes it in `launch(css=...)`)."""

CSS = """
.gradio-container {max-width: 1180px !important; margin: auto;}
#hg-header h1 {margin-bottom: 0.1em;}
#hg-header p {color: var(--body-text-color-subdued); margin-top: 0;}
.hg-card {border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 16px 20px;
          background: var(--block-background-fill);}
.hg-card {max-width: 100%; overflow-x: auto; box-sizing: border-box;}
.hg-card td, .hg-card code, .hg-card li, .hg-source {overflow-wrap: anywhere; word-break: break-word;}
.hg-card code {white-space: normal;}
.hg-lineage td:first-child {white-space: nowrap; width: 1%; overflow-wrap: normal; word-break: normal;}
.hg-card.hg-error {border-color: #fda29b; background: #fef3f2;}
.hg-verdict {display: inline-block; padding: 4px 14px; border-radius: 999px; color: white; font-weight: 700;
             font-size: 1.15em; letter-spacing: 0.02em;}
.hg-headline {margin-left: 12px; font-size: 1.05em;}
.hg-source {margin-top: 6px; word-break: break-all;}
.hg-message {margin-top: 10px; font-size: 1.02em;}
.hg-fix {margin-top: 8px;}
.hg-meaning {margin-top: 10px;}
.hg-grid {display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 14px 0;}
.hg-stat {background: var(--background-fill-secondary); border-radius: 8px; padding: 8px 12px;}
.hg-stat b {display: block; font-size: 1.35em;}
.hg-stat span {font-size: 0.85em; color: var(--body-text-color-subdued);}
.hg-help {font-size: 0.9em; line-height: 1.45; color: var(--body-text-color-subdued); border-left: 3px solid #84adff;
          padding: 6px 12px; margin: 4px 0;}
.hg-lineage, .hg-derivs, .hg-meta {border-collapse: collapse; margin-top: 4px; width: 100%;}
.hg-card table, .hg-card td, .hg-card th {border: none !important;}
.hg-card td, .hg-card th {padding: 5px 10px; text-align: left; vertical-align: top;
  border-bottom: 1px solid var(--border-color-primary) !important;}
.hg-ok {color: #067647; font-weight: 600;} .hg-bad {color: #b42318; font-weight: 600;}
.hg-warn {color: #b54708; font-weight: 600;} .hg-info {color: #175cd3; font-weight: 600;}
.hg-muted {color: var(--body-text-color-subdued);}
.hg-problems {margin: 10px 0 0 0; padding-left: 18px;}
.hg-problem-error b {color: #b42318;} .hg-problem-warning b {color: #b54708;}
.hg-dogs {display: grid; grid-template-columns: repeat(auto-fill, minmax(256px, 1fr)); gap: 14px; margin: 8px 0;}
.hg-dog {margin: 0; border: 3px solid transparent; border-radius: 12px; padding: 8px;
         background: var(--background-fill-secondary); min-width: 0;}
.hg-dog[data-role="query"], .hg-dog[data-role="b"] {background: #fff6e5;}
.hg-dog img {display: block; width: 100%; min-width: 256px; max-width: 320px; height: auto; aspect-ratio: 1 / 1;
             border-radius: 8px; margin: 0 auto;}
.hg-dog figcaption {margin-top: 8px; display: flex; flex-direction: column; gap: 2px; font-size: 0.92em;}
.hg-dog figcaption b {overflow-wrap: anywhere;}
.hg-tag {align-self: flex-start; font-size: 0.75em; text-transform: uppercase; letter-spacing: 0.05em;
         padding: 1px 8px; border-radius: 999px; background: #e0eaff; color: #1d2939;}
.hg-tag-query, .hg-tag-b {background: #f79009; color: white;}
.hg-entry h3 {margin-top: 0;}
.hg-entry-body {display: grid; grid-template-columns: minmax(256px, 320px) 1fr; gap: 16px;}
.hg-entry-body .hg-dogs {grid-template-columns: 1fr;}
.hg-mod {padding: 6px 0;}
.hg-table {max-width: 100%; overflow-x: auto;}
@media (max-width: 640px) {
  .hg-table {max-width: calc(100vw - 72px);}
  .hg-entry-body {grid-template-columns: 1fr;}
  .hg-headline {display: block; margin: 8px 0 0 0;}
}
"""
