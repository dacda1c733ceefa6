#!/usr/bin/env node
// The `tern` command, run from source: tsx compiles the TypeScript on load.
'use strict';
require('tsx/cjs');
require('../src/main.ts');
