"""Shared test setup: float32 JAX on the CPU, a headless matplotlib backend."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

# Default-suite tests run in the slow suite instead (issue 12: the default suite in under
# 5 minutes on 2 cores; CI runs both, so nothing is lost). Each is a variant of a test that
# stays in the default suite (named after '#'): another flow kind, dtype, sampler or model
# of the same check. Matched by node id; a trailing '*' matches any rest of the id.
MOVED_TO_SLOW = {
    # The discrete-VI models' docstring examples train or enumerate (~28 s in all); the
    # default suite checks the models through tests/test_discrete_vi_models.py and test_air.py
    "models/discrete_vi/*",
    # float64 variants of this session's new checks; their float32 siblings stay (and the
    # float64 machinery is checked by tests/test_x64.py)
    "tests/test_objectives_plate.py::test_plate_elbo_gives_discrete_sites_per_element_credit_unbiased[float64]",
    "tests/test_marginal_default.py::test_default_proposal_is_exact_for_sites_drawn_after_the_kept_ones[float64]",
    "tests/test_marginal_default.py::test_default_proposal_sim_weight_is_reciprocal_unbiased[float64]",
    "tests/test_marginal_default.py::test_default_proposal_estimates_a_mixture_density[float64]",
    "tests/test_gradient_report.py::test_reinforce_variances_match_brute_force_enumeration[float64]",
    "tests/test_auto_strategy.py::test_picks_reparameterisation_for_a_normal_site[float64]",
    "tests/test_objectives_low_variance.py::test_dreg_guide_gradient_variance_is_far_lower_at_k16[float64]",
    "tests/test_objectives_low_variance.py::test_the_values_are_the_standard_estimates[float64]",
    "tests/test_particle_counts.py::test_diwhvi_counts_outer_and_inner_particles_in_total[float64]",
    "tests/test_particle_counts.py::test_iwhvi_with_n_particles_is_the_bound_with_exactly_n[float64]",
    "tests/test_guides_flow_logprob.py::test_external_values_are_scored_by_inverting_the_flow[float64]",
    # the model-and-guide trace test stays; this one compares with a hand-written density
    "tests/test_air.py::test_hand_written_log_weight_is_log_p_minus_log_q_of_the_programs",
    # other samplers of the same mixture check: dpm_solver_*, pf_ode_*, euler_maruyama_linear stay
    "tests/test_score.py::test_sampler_reproduces_the_mixture[euler_maruyama]",
    "tests/test_score.py::test_sampler_reproduces_the_mixture[predictor_corrector]",
    "tests/test_score.py::test_sampler_reproduces_the_mixture[annealed_langevin_ve]",
    # mixture and hmm stay
    "tests/test_enumeration.py::test_log_density_equals_numpyros_enumerated_one[dawid_skene]",
    "tests/test_enumeration.py::test_log_density_equals_numpyros_enumerated_one[nested]",
    "tests/test_vi_enumeration.py::test_the_density_vi_fits_equals_the_enumerated_potential[hmm]",
    # affine_coupling and maf stay (spline and iaf also in the other flow tests)
    "tests/test_flows.py::test_logdet_matches_bruteforce_jacobian[2-spline_coupling]",
    "tests/test_flows.py::test_logdet_matches_bruteforce_jacobian[2-iaf]",
    "tests/test_flows.py::test_guide_log_q_is_the_pushforward_density[affine_coupling]",  # iaf
    "tests/test_flows.py::test_inverse_of_forward_is_identity[spline_coupling]",  # 3 others
    "tests/test_flows.py::test_fresh_flow_is_identity[spline_coupling]",  # affine, maf
    "tests/test_flows.py::test_fresh_flow_is_identity[iaf]",
    "tests/test_flows.py::test_guide_works_with_objectives[iwae]",  # elbo stays
    "tests/test_flows.py::test_guide_works_with_objectives[vimco]",
    # float32 stays
    "tests/test_vi_params.py::test_saved_params_rebuild_the_fitted_guide[float64]",
    "tests/test_gibbs_coupling.py::test_coupled_pair_is_enumerated_jointly_and_exactly[float64]",
    "tests/test_gibbs_coupling.py::test_discrete_mh_on_the_coupled_pair_reaches_every_configuration[float64]",
    "tests/test_fit_trust.py::test_nan_objective_keeps_the_params_of_the_step_before[1-float64]",
    "tests/test_fit_trust.py::test_nan_objective_keeps_the_params_of_the_step_before[7-float64]",
    "tests/test_vi_recover.py::test_fit_n_then_m_steps_equals_n_plus_m_bit_for_bit[True]",
    # the energy part stays
    "tests/test_coopflow.py::test_non_finite_training_names_the_part_and_keeps_the_last_good_model[flow-*",
    "tests/test_coopflow.py::test_non_finite_training_names_the_part_and_keeps_the_last_good_model[langevin-*",
    # interpolant stays
    "tests/test_flow_matching.py::test_closed_form_field_minimises_the_loss[time_dependent-straight-0.0]",
    # MALA and OBABO stay
    "tests/test_langevin_trust.py::test_burn_in_and_draw_gradients_exactly[RandomizedMidpoint]",
    # share_cache=False stays
    "tests/test_kernels.py::test_compose_leaves_gaussian_invariant_and_sums_n_grad[True]",
    # rwm and mala stay
    "tests/test_smc_trust.py::test_n_grad_counts_the_gradients_really_evaluated[two_gradients-f32]",
    "tests/test_smc_trust.py::test_n_grad_counts_the_gradients_really_evaluated[blackjax.random_walk-f32]",
    # mala-gauss stays
    "tests/test_langevin.py::test_adjusted_kernels_leave_target_invariant[obabo-banana]",
    # statistical: the exact-posterior fits of test_vi.py and test_fit.py's other tests stay
    "tests/test_fit.py::test_elbo_fit_recovers_exact_posterior",
    # test_extend_twice_equals_extend_once... and the Ctrl-C test extend chains too
    "tests/test_recoverable.py::test_extend_appends_draws_from_the_last_state",
    # the non-finite tests of latent_flow's other parts stay
    "tests/test_latent_flow.py::test_fit_names_diverging_latents",
    # test_sample_target_on_a_potential and the smoothed-path smoke test stay
    "tests/test_score.py::test_sample_target_reproduces_a_mixture[tempered]",
    "tests/test_vi_params.py::test_constrained_params_are_refused_with_the_way_out[float64]",
    # statistical; test_discrete_gibbs_matches_enumeration and the exact conditionals stay
    "tests/test_gibbs.py::test_mixture_gibbs_matches_exhaustive_enumeration[ours-factory0]",
    # Doctests that run a whole method, each covered by its module's default tests
    # (test_langevin_methods, test_posteriordb_models, test_neutra, test_smc_recover,
    # test_learned, test_score_gmm); they still run, in the slow suite.
    "inference/methods/langevin.py::inference.methods.langevin.Underdamped",
    "models/posteriordb.py::models.posteriordb",
    "inference/methods/neutra.py::inference.methods.neutra",
    "inference/smc/driver.py::inference.smc.driver.extend_smc",
    "inference/learned/method.py::inference.learned.method.Learned",
    "inference/learned/fitting.py::inference.learned.fitting.fit_flow_to_draws",
    "models/score_gmm.py::models.score_gmm",
    # The heaviest of the rest (measured 2026-12-06, a cold run on 2 cores: 6:53 in all):
    # docstring examples that run a whole method (>= 2 s each) and tests of >= 4 s whose file
    # or module keeps lighter default tests of the same code. They still run, in CI's slow
    # stage. Kept by default although as heavy: the NUTS reference posterior, the new-process
    # program-store load, infer's shapes test, the edited-constant recompile, the compile
    # counts and elbo(plate=)'s unbiasedness check.
    "inference/__init__.py::inference",
    "inference/chains.py::inference.chains",
    "inference/diagnostics.py::inference.diagnostics.diagnose",
    "inference/flow_matching/reflow.py::inference.flow_matching.reflow.reflow",
    "inference/flow_matching/training.py::inference.flow_matching.training.train",
    "inference/flows.py::inference.flows",
    "inference/flows.py::inference.flows.FlowSpec",
    "inference/infer.py::inference.infer.infer",
    "inference/learned/fitting.py::inference.learned.fitting.fit_flow_matching_to_draws",
    "inference/methods/langevin.py::inference.methods.langevin.MALA",
    "inference/methods/langevin.py::inference.methods.langevin.RandomizedMidpoint",
    "inference/methods/langevin.py::inference.methods.langevin.SGHMC",
    "inference/methods/langevin.py::inference.methods.langevin.SGLD",
    "inference/methods/nuts.py::inference.methods.nuts.NUTS",
    "inference/result.py::inference.result.Result",
    "inference/result.py::inference.result.Result.diagnose",
    "inference/result.py::inference.result.Result.extend",
    "inference/result.py::inference.result.Result.save",
    "inference/result.py::inference.result.load_result",
    "inference/sbc.py::inference.sbc",
    "inference/sbc.py::inference.sbc.sbc",
    "inference/score/losses.py::inference.score.losses.dsm_loss",
    "inference/score/losses.py::inference.score.losses.relative_score_error",
    "inference/score/losses.py::inference.score.losses.ssm_loss",
    "inference/score/training.py::inference.score.training.fit_score",
    "inference/smc/__init__.py::inference.smc",
    "inference/smc/driver.py::inference.smc.driver.run_smc",
    "inference/smc/method.py::inference.smc.method.SMC",
    "inference/smc/tempering.py::inference.smc.tempering.tempering",
    "inference/vi/fit.py::inference.vi.fit.fit",
    "inference/vi/guides.py::inference.vi.guides.FlowDistribution",
    "inference/vi/guides.py::inference.vi.guides.mvn",
    "inference/vi/method.py::inference.vi.method",
    "models/coopflow/training.py::models.coopflow.training.fit",
    "models/latent_flow/__init__.py::models.latent_flow",
    "models/latent_flow/training.py::models.latent_flow.training.fit",
    "models/score_gmm.py::models.score_gmm.GaussianMixture.posterior",
    "models/score_net.py::models.score_net.digits_net",
    "tests/test_arviz.py::test_groups_and_schema_names",
    "tests/test_coopflow.py::test_ctrl_c_returns_the_model_reached_and_its_history",
    "tests/test_diagnostics.py::test_infer_warns_each_problem_once_and_diagnostics_false_silences",
    "tests/test_discrete_vi_models.py::test_sbn_and_gmm_trace",
    "tests/test_enumeration.py::test_log_density_equals_numpyros_enumerated_one[mixture]",
    "tests/test_flow_matching.py::test_closed_form_field_minimises_the_loss[time_dependent-interpolant-0.5]",
    "tests/test_flows.py::test_guide_log_q_is_the_pushforward_density[iaf]",
    "tests/test_gibbs.py::test_enumerated_conditionals_are_exact",
    "tests/test_gibbs.py::test_infer_with_gibbs_returns_a_result_with_arviz_output",
    "tests/test_gibbs_recover.py::test_a_checkpoint_survives_a_new_method_object_with_other_function_addresses",
    "tests/test_gibbs_recover.py::test_extend_equals_a_longer_run",
    "tests/test_guides.py::test_normal_guide_log_q_matches_hand_computation",
    "tests/test_guides_flow_logprob.py::test_own_draws_in_sim_are_scored_by_the_forward_pass[float32]",
    "tests/test_infer.py::test_nonfinite_initial_density_names_sites",
    "tests/test_infer.py::test_progress_bar_runs_and_leaves_draws_unchanged",
    "tests/test_learned_recover.py::test_extend_continues_the_chains_with_the_same_proposal",
    "tests/test_objectives.py::test_every_objective_jits_and_returns_finite_values_with_the_params_structure",
    "tests/test_objectives_plate.py::test_joint_elbo_with_k_draws_uses_leave_one_out_baselines_unbiased",
    "tests/test_recoverable.py::test_a_checkpoint_is_not_resumed_with_an_edited_model",
    "tests/test_score.py::test_sampler_reproduces_the_mixture[pf_ode_euler]",
    "tests/test_smc.py::test_infer_shapes_and_stats",
    "tests/test_smc_recover.py::test_checkpoint_resume_after_a_crash_is_bit_identical",
    "tests/test_vi_params.py::test_saved_params_rebuild_the_fitted_guide[float32]",
    # and, after that move (4:55), the next heaviest whose siblings cover the same machinery:
    # Ctrl-C of Learned and Gibbs (run_chains' Ctrl-C: test_recoverable, test_interrupt), the
    # Gibbs kernel protocol (test_gibbs' other tests), SMC's default checkpointing (its other
    # checkpoint tests), NUTS's gradient counts (the Langevin and SMC counts stay)
    "tests/test_learned_recover.py::test_ctrl_c_during_irmh_returns_the_draws_so_far",
    "tests/test_gibbs_recover.py::test_ctrl_c_returns_the_draws_so_far_and_extend_finishes_the_run",
    "tests/test_gibbs.py::test_gibbs_kernel_protocol_vmaps_and_is_reproducible",
    "tests/test_smc_recover.py::test_checkpoint_every_stage_by_default",
    "tests/test_gradient_counts.py::test_nuts_reports_its_warmup_and_sampling_gradients",
    # session 9 (5:08 with this session's new default tests): Gibbs against enumeration
    # (test_gibbs_coupling's exact checks stay), forward scoring of own flow draws under
    # NumPyro's handlers in float32 (its float64 variant and the objective's forward
    # scoring stay), a loaded Learned Result's refusal to extend (save/load and extend:
    # test_recoverable)
    "tests/test_gibbs.py::test_discrete_gibbs_matches_enumeration",
    "tests/test_guides_flow_logprob.py::test_own_draws_under_numpyro_handlers_are_scored_by_the_forward_pass[float32]",
    "tests/test_learned_recover.py::test_a_loaded_result_says_how_to_draw_more",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    prefixes = tuple(n[:-1] for n in MOVED_TO_SLOW if n.endswith("*"))
    for item in items:
        if item.nodeid in MOVED_TO_SLOW or item.nodeid.startswith(prefixes):
            item.add_marker(pytest.mark.slow)
