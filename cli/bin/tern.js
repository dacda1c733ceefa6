#!/usr/bin/env node
// The `tern` command, run from source: tsx compiles the TypeScript on load.
/* global require */
/* eslint-disable @typescript-eslint/no-require-imports */
'use strict';
require('tsx/cjs');
require('../src/main.ts');
