import { describe, expect, it } from 'vitest';
import { validateDuration, validateName } from './demo.svelte';

describe('validateDuration', () => {
	it.each(['1000', '5000', '30000', ' 2500 '])('accepts %j', (value) => {
		expect(validateDuration(value)).toBeNull();
	});

	it.each(['', '   ', '999', '30001', '0', '-5000', 'abc', '12.5', '1e4', '5000ms', '0x400'])('refuses %j', (value) => {
		expect(validateDuration(value)).toMatch(/\S/);
	});
});

describe('validateName', () => {
	it('accepts 1 to 200 characters after trimming', () => {
		expect(validateName('a')).toBeNull();
		expect(validateName(`  ${'x'.repeat(200)}  `)).toBeNull();
	});

	it('refuses empty and too long names', () => {
		expect(validateName('   ')).toMatch(/\S/);
		expect(validateName('x'.repeat(201))).toMatch(/\S/);
	});
});
