"""Text resources below every model component: training and estimation corpora, counterfactual word swaps."""
